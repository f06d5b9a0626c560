"""Hearing variants over WHEP: ``?mono=1&clear=1&balance=-25`` against a real
server and engine. A variant is one engine sink shared by its listeners,
made by the first and removed with the last, whatever way they leave."""
from __future__ import annotations

import dataclasses

import httpx
import pytest
import trio

from appliance.sessions import TEMP_PREFIX
from tests.support.webrtc import dominant_frequency, open_aiortc_listener, synthetic_offer
from tests.web.conftest import IDLE, make_config, open_server
import trio.lowlevel

pytestmark = pytest.mark.trio


def variant_sinks(server) -> list[str]:
    return sorted(s for s in server.service.engine.sinks() if "~" in s)


@pytest.mark.parametrize("query", [
    "mono=2", "mono=true", "mono=", "mono", "clear=yes", "clear=1%00",
    "mono=1&mono=1", "mono=1&mono=0", "balance=25&balance=25",
    "balance=30", "balance=125", "balance=-125", "balance=+25", "balance=25.0",
    "balance=1e2", "balance=" + "9" * 5000, "balance=-" + "1" * 40, "balance=%D9%A2%D9%A5",
    "balance=0x19", "balance= 25", "balance=", "variant=mono", "Mono=1", "x=1",
    "mono=1&clear=1&balance=25&extra=1", "%00=1",
])
async def test_bad_variants_are_refused_and_leave_nothing(server, query):
    response = await server.post_offer(synthetic_offer(), f"/api/whep/main?{query}")
    assert response.status_code == 400, response.text
    assert server.service.census() == IDLE
    assert variant_sinks(server) == []


async def test_one_sink_per_variant_shared_and_removed_with_its_last_listener(server):
    svc = server.service
    posted = []
    # the same variant asked for in three spellings, another one, the channel itself
    for query in ("mono=1&clear=1", "clear=1&mono=1&balance=0", "balance=-0&clear=1&mono=1",
                  "balance=-25", "mono=0&clear=0", ""):
        response = await server.post_offer(synthetic_offer(), f"/api/whep/main?{query}")
        assert response.status_code == 201, response.text
        posted.append(response.headers["Location"])
    assert variant_sinks(server) == [f"{TEMP_PREFIX}main~bal-25", f"{TEMP_PREFIX}main~mono.clear"]
    assert svc.sessions.variant_users == {f"{TEMP_PREFIX}main~bal-25": 1,
                                          f"{TEMP_PREFIX}main~mono.clear": 3}
    assert posted[5].startswith("/api/whep/main/")
    status = (await server.client.get("/api/status")).json()
    assert status["listeners"]["sinks"] == {"main": 6}    # a variant counts for its channel
    channels = (await server.client.get("/api/listen/channels")).json()
    assert [c["id"] for c in channels] == ["main"]        # variants are not channels
    for location in posted[:2]:
        assert (await server.client.delete(location)).status_code == 200
    assert variant_sinks(server) == [f"{TEMP_PREFIX}main~bal-25", f"{TEMP_PREFIX}main~mono.clear"]
    for location in posted[2:]:
        assert (await server.client.delete(location)).status_code == 200
    assert variant_sinks(server) == []
    assert svc.sessions.variant_users == {}
    assert svc.census() == IDLE


async def test_a_variant_listener_hears_the_channel_and_a_source_can_have_one(server):
    async with open_aiortc_listener() as peer:
        response = await server.post_offer(await peer.create_offer(),
                                           "/api/whep/main?clear=1&balance=25")
        assert response.status_code == 201, response.text
        await peer.accept_answer(response.text)
        await peer.wait_connected(timeout=10)
        assert abs(dominant_frequency(await peer.record(0.5)) - 440.0) < 2.0
        # its only listener is on a variant: the channel's engine latency is the variant's
        channels = (await server.client.get("/api/listen/channels")).json()
        assert 0 < channels[0]["engine_latency_ms"] < 100
        source = await server.post_offer(synthetic_offer(), "/api/whep/source/tone?mono=1")
        assert source.status_code == 201, source.text
        census = server.service.census()
        # the source's temporary sink, and one variant of each
        assert census["temporary_sinks"] == 3 and census["temporary_routes"] == 1
        for r in (response, source):
            assert (await server.client.delete(r.headers["Location"])).status_code == 200
    assert server.service.census() == IDLE
    assert variant_sinks(server) == []


async def test_a_refused_listener_gives_its_variant_back(tmp_path):
    config = make_config(tmp_path)
    config = config.replace(engine=dataclasses.replace(config.engine, max_listeners=1))
    async with open_server(config) as server:
        first = await server.post_offer(synthetic_offer(), "/api/whep/main?mono=1")
        assert first.status_code == 201
        # the engine is full: refused after the variant was taken
        for query in ("mono=1", "clear=1"):
            refused = await server.post_offer(synthetic_offer(), f"/api/whep/main?{query}")
            assert refused.status_code == 503, refused.text
        assert server.service.sessions.variant_users == {f"{TEMP_PREFIX}main~mono": 1}
        assert variant_sinks(server) == [f"{TEMP_PREFIX}main~mono"]
        assert (await server.client.delete(first.headers["Location"])).status_code == 200
        assert server.service.census() == IDLE and variant_sinks(server) == []


async def test_many_listeners_joining_and_leaving_at_once_share_one_variant(server):
    """Joins and leaves interleaved: the count never lets a sink go while it
    has a listener, nor be made twice."""
    locations: list[str] = []

    async def join() -> None:
        response = await server.post_offer(synthetic_offer(), "/api/whep/main?mono=1")
        assert response.status_code == 201, response.text
        locations.append(response.headers["Location"])

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(join)
    assert server.service.sessions.variant_users == {f"{TEMP_PREFIX}main~mono": 20}
    async with trio.open_nursery() as nursery:
        for location in locations[:10]:
            nursery.start_soon(server.client.delete, location)
        for _ in range(5):
            nursery.start_soon(join)
    assert server.service.sessions.variant_users == {f"{TEMP_PREFIX}main~mono": 15}
    assert server.service.engine.stats().listeners == 15
    async with trio.open_nursery() as nursery:
        for location in locations[10:]:
            nursery.start_soon(server.client.delete, location)
    assert server.service.census() == IDLE and variant_sinks(server) == []


async def test_an_answer_timeout_gives_its_variant_back(tmp_path):
    config = make_config(tmp_path, answer_timeout_s=0.001)
    # webrtcbin: its answer takes time (the lean transport answers at once)
    config = config.replace(engine=dataclasses.replace(config.engine, transport="webrtcbin"))
    async with open_server(config) as server:
        for path in ("/api/whep/main?mono=1", "/api/whep/source/tone?clear=1&balance=100"):
            r = await server.post_offer(synthetic_offer(), path)
            assert r.status_code == 500, r.text
            assert server.service.census() == IDLE and variant_sinks(server) == []


async def test_a_crash_in_one_session_keeps_the_variant_for_the_other(server):
    first = await server.post_offer(synthetic_offer(), "/api/whep/main?balance=-100")
    second = await server.post_offer(synthetic_offer(), "/api/whep/main?balance=-100")
    crashed = server.session_for(first)
    crashed.listener._send.send_nowait("not an engine event")   # its watcher raises
    with trio.fail_after(5):
        await crashed.done.wait()
    assert crashed.end_reason == "crashed"
    assert server.service.sessions.variant_users == {f"{TEMP_PREFIX}main~bal-100": 1}
    assert (await server.client.delete(second.headers["Location"])).status_code == 200
    assert server.service.census() == IDLE and variant_sinks(server) == []


async def test_a_client_that_vanishes_during_its_post_leaves_no_variant(tmp_path):
    config = make_config(tmp_path)
    config = config.replace(engine=dataclasses.replace(config.engine, transport="webrtcbin"))
    async with open_server(config) as server:
        service = server.service
        async with httpx.AsyncClient(base_url=server.url) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: client.post(
                    "/api/whep/main?mono=1&clear=1", content=synthetic_offer(),
                    headers={"Content-Type": "application/sdp"}))
                with trio.fail_after(5):
                    while not service.sessions:   # the POST reached the service
                        await trio.lowlevel.checkpoint()
                session = next(iter(service.sessions))
                nursery.cancel_scope.cancel()     # the client goes away mid-request
        with trio.fail_after(5):
            await session.done.wait()
        assert not session.answered
        assert service.census() == IDLE and variant_sinks(server) == []
