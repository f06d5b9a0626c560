"""A channel's settings for listeners and the room: language, description
and alignment delay, changed live through the admin API, checked as an
attacker would send them, persisted."""
from __future__ import annotations

import json

import pytest

from tests.support.webrtc import open_aiortc_listener, synthetic_offer
from tests.web.conftest import IDLE, make_config, open_server

pytestmark = pytest.mark.trio


@pytest.mark.parametrize("body, field", [
    ({"delay_ms": -1}, "delay_ms"), ({"delay_ms": 501}, "delay_ms"),
    ({"delay_ms": 1e308}, "delay_ms"), ({"delay_ms": 10**30}, "delay_ms"),
    ({"delay_ms": "100"}, "delay_ms"), ({"delay_ms": True}, "delay_ms"),
    ({"delay_ms": 100.5}, "delay_ms"), ({"delay_ms": None}, "delay_ms"),
    ({"delay_ms": [100]}, "delay_ms"),
    ({"language": "not a tag"}, "language"), ({"language": "fr\n"}, "language"),
    ({"language": "x" * 36}, "language"), ({"language": 7}, "language"),
    ({"description": "a\x00b"}, "description"), ({"description": "d" * 201}, "description"),
    ({"description": "\ud800"}, "description"), ({"bitrate": 64000}, "cannot be changed"),
])
async def test_bad_channel_settings_are_refused_and_change_nothing(server, body, field):
    # as JSON text: a lone surrogate travels escaped, as an attacker would send it
    r = await server.client.patch("/api/sinks/main", content=json.dumps(body),
                                  headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and field in r.text, r.text
    sink = (await server.client.get("/api/sinks/main")).json()
    assert (sink["delay_ms"], sink["language"], sink["description"]) == (0, "", "")
    assert server.service.engine.sinks()["main"].delay_ms == 0


async def test_channel_settings_change_live_and_survive_a_restart(tmp_path):
    config = make_config(tmp_path)
    async with open_server(config) as server:
        # a listener on a variant of the channel: it follows the delay in the engine
        listening = await server.post_offer(synthetic_offer(), "/api/whep/main?clear=1")
        assert listening.status_code == 201
        r = await server.client.patch("/api/sinks/main", json={
            "delay_ms": 250, "language": "pt-BR", "description": "Tradução simultânea"})
        assert r.status_code == 200, r.text
        assert (r.json()["delay_ms"], r.json()["language"]) == (250, "pt-BR")
        assert server.service.engine.sinks()["main"].delay_ms == 250
        channels = (await server.client.get("/api/listen/channels")).json()
        assert channels[0]["language"] == "pt-BR"
        assert channels[0]["description"] == "Tradução simultânea"
        assert (await server.client.patch("/api/sinks/main", json={"delay_ms": 0})).status_code == 200
        assert (await server.client.patch("/api/sinks/main", json={"delay_ms": 40})).status_code == 200
        assert (await server.client.delete(listening.headers["Location"])).status_code == 200
        assert server.service.census() == IDLE
        saved = json.loads((tmp_path / "state.json").read_text())["graph"]["sinks"][0]
        assert (saved["delay_ms"], saved["language"]) == (40, "pt-BR")
    async with open_server(config) as server:
        assert server.service.engine.sinks()["main"].delay_ms == 40
        sink = (await server.client.get("/api/sinks/main")).json()
        assert (sink["delay_ms"], sink["description"]) == (40, "Tradução simultânea")


async def test_a_new_delay_forgets_the_latency_measured_before_it(tmp_path):
    """With nobody listening, the channel list kept the latency measured with
    the old delay until a listener sent new packets: the next listener's page
    showed it ~300 ms off for 3 s. A new delay forgets it; the next packets
    measure the new one."""
    async with open_server(make_config(tmp_path)) as server:
        async def latency() -> float | None:
            channels = (await server.client.get("/api/listen/channels")).json()
            return channels[0]["engine_latency_ms"]

        async with open_aiortc_listener() as peer:
            r = await server.post_offer(await peer.create_offer())
            await peer.accept_answer(r.text)
            await peer.wait_connected(timeout=10)
            await peer.record(0.3)
            before = await latency()
            assert before is not None and before < 100
            assert (await server.client.delete(r.headers["Location"])).status_code == 200
        r = await server.client.patch("/api/sinks/main", json={"delay_ms": 300})
        assert r.status_code == 200
        assert await latency() is None
        async with open_aiortc_listener() as peer:
            r = await server.post_offer(await peer.create_offer())
            await peer.accept_answer(r.text)
            await peer.wait_connected(timeout=10)
            await peer.record(0.3)
            assert 300 <= await latency() < 400
            assert (await server.client.delete(r.headers["Location"])).status_code == 200
        assert server.service.census() == IDLE
