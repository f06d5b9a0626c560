"""Every way a listener session ends leaves nothing behind: engine listener,
registries, temporary sink/route, candidates."""
from __future__ import annotations

import dataclasses
import random
from typing import Any
import socket
import time

import httpx
import pytest
import trio

from appliance import live_engine_threads
from appliance.config import ServerConfig
from appliance._native import RawEvent, ffi, lib
from tests.support.webrtc import dominant_frequency, open_aiortc_listener, synthetic_offer
from tests.web.conftest import ADMIN, IDLE, make_config, open_server
import trio.lowlevel

pytestmark = pytest.mark.trio


def _closed_udp_port() -> int:
    """A loopback UDP port nobody listens on (ICE checks to it fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _webrtcbin_config(tmp_path, **server):
    """For what only webrtcbin does: a full ICE agent whose own checks fail,
    an answer that takes time. The lean transport answers at once and never
    checks (tests/test_lean.py covers its endings)."""
    config = make_config(tmp_path, **server)
    return config.replace(engine=dataclasses.replace(config.engine, transport="webrtcbin"))


async def _connect(server, peer, path="/api/whep/main"):
    r = await server.post_offer(await peer.create_offer(), path)
    assert r.status_code == 201, r.text
    await peer.accept_answer(r.text)
    await peer.wait_connected(timeout=10)
    return r


async def test_sessions_expire_without_heartbeat_or_packets_and_live_peers_stay(tmp_path):
    timeout = 2.5
    async with open_server(make_config(tmp_path, session_timeout_s=timeout)) as server:
        async with open_aiortc_listener() as peer:
            live = server.session_for(await _connect(server, peer))
            silent = server.session_for(await server.post_offer(synthetic_offer()))
            kept = await server.post_offer(synthetic_offer())
            kept_session = server.session_for(kept)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                async def heartbeats() -> None:
                    while True:
                        r = await server.client.post(kept.headers["Location"])
                        assert r.status_code == 204
                        await trio.sleep(timeout / 5)

                # heartbeats keep a session without packets alive; packets (ICE
                # consent, RTCP) keep a real peer alive without heartbeats
                nursery.start_soon(heartbeats)
                with trio.fail_after(timeout + 3):
                    await silent.done.wait()
                assert silent.end_reason == "expired"
                assert trio.current_time() - start >= timeout - 0.5
                await trio.sleep_until(start + 2 * timeout)
                assert not kept_session.done.is_set() and not live.done.is_set()
                nursery.cancel_scope.cancel()
            assert abs(dominant_frequency(await peer.record(0.3)) - 440) < 2
            await peer.close()  # the tab is closed: no DELETE, nothing more arrives
            with trio.fail_after(timeout + 3):
                await live.done.wait()
                await kept_session.done.wait()
            # webrtcbin notices nothing; the lean transport hears aiortc's DTLS close_notify
            assert live.end_reason in ("expired", "ice closed")
            assert kept_session.end_reason == "expired"
        assert server.service.census() == IDLE


async def test_the_liveness_watcher_rearms_from_the_last_heartbeat_and_reads_rarely(tmp_path):
    """A silent session kept by heartbeats past its first check expires one
    timeout after its last heartbeat, not before and not much later; the
    watcher reads the listener's stats about once per timeout, not five
    times (a thousand listeners made a thousand reads a second)."""
    timeout = 2.0
    async with open_server(make_config(tmp_path, session_timeout_s=timeout)) as server:
        r = await server.post_offer(synthetic_offer())
        session = server.session_for(r)
        listener = session.listener
        reads = 0
        read = listener.stats

        def counted():
            nonlocal reads
            reads += 1
            return read()

        listener.stats = counted
        start = time.monotonic()
        while time.monotonic() - start < 1.5 * timeout:   # past the first check
            assert (await server.client.post(r.headers["Location"])).status_code == 204
            await trio.sleep(timeout / 4)
        last = session.last_heartbeat
        with trio.fail_after(timeout + 3):
            await session.done.wait()
        ended = time.monotonic()
        assert session.end_reason == "expired"
        assert ended - last >= timeout
        assert ended - last < timeout + 1.5
        # about one read per timeout (a late heartbeat shortens one sleep);
        # a watcher that polls makes five
        assert reads <= 2 * (ended - start) / timeout + 1, reads
        assert server.service.census() == IDLE


async def test_status_shows_each_listeners_health_as_it_is_now(tmp_path):
    """The health GET /api/status shows is read when asked: never older than
    the engine's own count a moment before, though the liveness watcher
    (timeout 60 s) has not looked at the listener since it started."""
    async with open_server(make_config(tmp_path, session_timeout_s=60)) as server:
        async with open_aiortc_listener() as peer:
            r = await _connect(server, peer)
            listener = server.session_for(r).listener
            with trio.fail_after(10):
                while listener.stats().packets_sent < 100:
                    await peer.record(0.05)
            sent = listener.stats().packets_sent
            (health,) = (await server.client.get("/api/status")).json()["sessions"]
            assert health["packets_sent"] >= sent
            assert health["state"] in ("connected", "completed")
            assert (await server.client.delete(r.headers["Location"])).status_code == 200
        assert (await server.client.get("/api/status")).json()["sessions"] == []


async def test_ice_failure_ends_the_session(tmp_path):
    async with open_server(_webrtcbin_config(tmp_path, session_timeout_s=60)) as server:
        r = await server.post_offer(synthetic_offer(candidate_port=_closed_udp_port()))
        assert r.status_code == 201
        session = server.session_for(r)
        with trio.fail_after(30):
            await session.done.wait()
        assert session.end_reason == "ice failed"
        assert server.service.census() == IDLE
        # ended moments ago: its DELETE is answered as for a live one
        assert (await server.client.delete(r.headers["Location"])).status_code == 200


async def test_answer_timeout_gives_500_and_leaves_nothing(tmp_path):
    async with open_server(_webrtcbin_config(tmp_path, answer_timeout_s=0.001)) as server:
        for path in ("/api/whep/main", "/api/whep/source/tone", "/api/whep/route/tone-main"):
            r = await server.post_offer(synthetic_offer(), path)
            assert r.status_code == 500, r.text
            assert "no answer" in r.text
            assert server.service.census() == IDLE


async def test_a_crash_inside_a_session_is_cleaned_up_and_the_service_goes_on(server):
    r = await server.post_offer(synthetic_offer(), "/api/whep/source/tone")
    session = server.session_for(r)
    session.listener._send.send_nowait("not an engine event")  # the session's watcher raises
    with trio.fail_after(5):
        await session.done.wait()
    assert session.end_reason == "crashed"
    assert server.service.census() == IDLE
    async with open_aiortc_listener() as peer:
        r = await _connect(server, peer)
        assert abs(dominant_frequency(await peer.record(0.3)) - 440) < 2
        assert (await server.client.delete(r.headers["Location"])).status_code == 200
    assert server.service.census() == IDLE


async def test_a_client_that_vanishes_during_its_post_leaves_nothing(tmp_path):
    async with open_server(_webrtcbin_config(tmp_path)) as server:
        await _vanish_during_post(server)


async def _vanish_during_post(server):
    service = server.service
    for path in ("/api/whep/main", "/api/whep/route/tone-main"):
        async with httpx.AsyncClient(base_url=server.url, headers=ADMIN) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda path=path: client.post(
                    path, content=synthetic_offer(), headers={"Content-Type": "application/sdp"}))
                with trio.fail_after(5):
                    while not service.sessions:  # the POST reached the service
                        await trio.lowlevel.checkpoint()
                session = next(iter(service.sessions))
                nursery.cancel_scope.cancel()  # the client goes away mid-request
        with trio.fail_after(5):
            await session.done.wait()
        assert not session.answered
        assert service.census() == IDLE


async def test_late_engine_events_for_a_gone_listener_are_ignored(server):
    r = await server.post_offer(synthetic_offer())
    session = server.session_for(r)
    listener = session.listener
    assert (await server.client.delete(r.headers["Location"])).status_code == 200
    assert listener.closed and listener.id not in server.service.engine.listeners()
    for etype in (lib.AE_EVENT_ANSWER_READY, lib.AE_EVENT_ANSWER_FAILED,
                  lib.AE_EVENT_CANDIDATE_GATHERED, lib.AE_EVENT_LISTENER_STATE):
        raw = ffi.new("ae_event *", {"type": etype, "listener_id": listener.id,
                                     "state": lib.AE_LISTENER_FAILED})
        # as the engine's event thread would hand it over, late
        assert server.service.engine._deliver(RawEvent(raw)) is None
    with pytest.raises(trio.EndOfChannel):
        listener.events.receive_nowait()
    assert session.candidates == [] and server.service.census() == IDLE
    assert (await server.client.get("/api/status")).status_code == 200


async def test_delete_of_a_temporary_listener_removes_its_sink_and_route(server):
    r = await server.post_offer(synthetic_offer(), "/api/whep/route/tone-main")
    assert r.status_code == 201
    sink_id = r.headers["Location"].split("/")[3]
    assert sink_id in server.service.engine.sinks()
    assert sink_id not in [s["id"] for s in (await server.client.get("/api/sinks")).json()]
    assert (await server.client.delete(r.headers["Location"])).status_code == 200
    assert sink_id not in server.service.engine.sinks()
    assert server.service.census() == IDLE


async def test_shutdown_with_listeners_connected_cleans_everything(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        service = server.service
        async with open_aiortc_listener() as a, open_aiortc_listener() as b:
            await _connect(server, a)
            await _connect(server, b, "/api/whep/source/tone")
            for _ in range(5):
                assert (await server.post_offer(synthetic_offer())).status_code == 201
            sessions = list(service.sessions)
            assert len(sessions) == 7 and service.engine.stats().listeners == 7
            with trio.fail_after(15):
                await server.shutdown()
            assert all(s.done.is_set() and s.end_reason == "shutdown" for s in sessions)
            assert len(service.sessions) == 0 and service.engine.listeners() == {}
            assert service.closing
    assert live_engine_threads() == 0


# The box's own default. Client and box share this test's one trio thread,
# which answers about 250 requests a second on an idle machine; 200 clients
# share what the test's other requests leave of it. With 6 s, a client's
# beats came up to 5.7 s apart on an idle machine, and one expired in CI.
SESSION_TIMEOUT_S = ServerConfig.session_timeout_s
BEAT_S = SESSION_TIMEOUT_S / 3


async def test_200_listeners_torn_down_in_random_order(tmp_path):
    rng = random.Random(20261121)
    # the idle ones never connect: they are kept here by heartbeats alone
    config = make_config(tmp_path, session_timeout_s=SESSION_TIMEOUT_S, max_listeners=300,
                         connect_timeout_s=120)
    async with open_server(config) as server:
        client, service = server.client, server.service
        responses: list[httpx.Response] = []
        paths = ["/api/whep/main"] * 8 + ["/api/whep/source/tone", "/api/whep/route/tone-main"]
        beating: set[str] = set()  # sessions whose client is still there
        by_location: dict[str, Any] = {}

        beat_limit = trio.CapacityLimiter(8)   # a few connections: the client's pool stays small

        async def heartbeats(location: str) -> None:
            # each client on its own clock, as phones are, not in rounds:
            # a round waited for its slowest beat
            while location in beating:
                await trio.sleep(BEAT_S)
                async with beat_limit:
                    r = await client.post(location)
                if location in beating:
                    session = by_location[location]
                    assert r.status_code == 204, (session.end_reason, session.state)

        async def post_many(n: int) -> None:
            for _ in range(n):
                r = await server.post_offer(synthetic_offer(), rng.choice(paths))
                assert r.status_code == 201, r.text
                responses.append(r)
                by_location[r.headers["Location"]] = server.session_for(r)
                beating.add(r.headers["Location"])
                keepalive.start_soon(heartbeats, r.headers["Location"])

        async with trio.open_nursery() as keepalive, open_aiortc_listener() as p1, \
                open_aiortc_listener() as p2, open_aiortc_listener() as p3:
            real = [await _connect(server, p, path) for p, path in
                    ((p1, "/api/whep/main"), (p2, "/api/whep/source/tone"))]
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(post_many, 40)
            real.append(await _connect(server, p3, "/api/whep/main"))  # among 200 idle ones
            status = (await client.get("/api/status")).json()
            assert status["listeners"]["total"] == 203
            assert service.engine.stats().listeners == 203
            for peer in (p1, p2, p3):  # 200 idle listeners do not disturb them
                assert abs(dominant_frequency(await peer.record(0.3)) - 440) < 2

            everyone = [(r, None) for r in responses] + list(zip(real, (p1, p2, p3), strict=True))
            rng.shuffle(everyone)
            sessions = [server.session_for(r) for r, _ in everyone]
            actions = {"delete": 0, "vanish": 0, "heartbeat-delete": 0, "delete-twice": 0}

            async def end(r: httpx.Response, peer) -> None:
                action = rng.choice(list(actions))
                actions[action] += 1
                location = r.headers["Location"]
                beating.discard(location)
                if action == "vanish":  # no DELETE: the session expires
                    if peer is not None:
                        await peer.close()
                    return
                if action == "heartbeat-delete":
                    assert (await client.post(location)).status_code == 204
                assert (await client.delete(location)).status_code == 200
                if action == "delete-twice":   # DELETE is idempotent for a while
                    assert (await client.delete(location)).status_code == 200

            limit = trio.CapacityLimiter(8)

            async def limited(r, peer):
                async with limit:
                    await end(r, peer)

            async with trio.open_nursery() as nursery:
                for r, peer in everyone:
                    nursery.start_soon(limited, r, peer)
                    if rng.random() < 0.1:
                        await trio.lowlevel.checkpoint()  # interleave starts and ends
            assert min(actions.values()) > 10
            with trio.fail_after(SESSION_TIMEOUT_S + 10):   # the vanished ones expire
                for session in sessions:
                    await session.done.wait()
            # a real peer that vanishes says goodbye over DTLS on the lean transport
            reasons = {s.end_reason for s in sessions}
            assert {"deleted", "expired"} <= reasons <= {"deleted", "expired", "ice closed"}
            assert service.census() == IDLE
            status = (await client.get("/api/status")).json()
            assert status["listeners"]["total"] == 0
            assert status["engine"]["listeners"] == 0
            keepalive.cancel_scope.cancel()


async def test_a_listener_that_never_connects_does_not_silence_a_new_one(server):
    assert (await server.post_offer(synthetic_offer())).status_code == 201
    async with open_aiortc_listener() as peer:
        await _connect(server, peer)
        samples = await peer.record(0.3, timeout=3)
        assert abs(dominant_frequency(samples) - 440) < 2
