"""Admin API against the real server and engine; changes persist."""
from __future__ import annotations

import json

import pytest
import trio

from tests.support.webrtc import dominant_frequency, open_aiortc_listener, synthetic_offer
from appliance.service import open_service
from tests.web.conftest import IDLE, make_config, open_server

pytestmark = pytest.mark.trio


async def test_default_graph_is_a_tone_routed_to_main(server):
    client = server.client
    sources = (await client.get("/api/sources")).json()
    sinks = (await client.get("/api/sinks")).json()
    routes = (await client.get("/api/routes")).json()
    assert [(s["id"], s["kind"], s["tone_hz"]) for s in sources] == [("tone", "tone", 440.0)]
    assert sources[0]["device_state"] == {"state": "ok"} and sources[0]["xruns"] == 0
    assert [(s["id"], s["kind"], s["listeners"]) for s in sinks] == [("main", "opus", 0)]
    assert [(r["id"], r["source_id"], r["sink_id"], r["gain_db"], r["muted"])
            for r in routes] == [("tone-main", "tone", "main", 0.0, False)]
    status = (await client.get("/api/status")).json()
    assert status["name"] == "Listening appliance" and status["version"] == "0.1.0"
    assert status["uptime_s"] >= 0 and status["xruns"]["total"] == 0
    assert status["engine"]["sources"] == 1 and status["devices"] == []
    assert (await client.get("/api/sources/tone")).json()["name"] == "Test tone"
    assert (await client.get("/api/sources/nope")).status_code == 404
    assert (await client.get("/api/nothing")).status_code == 404


async def test_a_new_channel_is_heard_and_survives_a_restart(tmp_path):
    config = make_config(tmp_path)
    async with open_server(config) as server:
        client = server.client
        r = await client.post("/api/sources", json={
            "id": "hi", "name": "High tone", "kind": "tone", "tone_hz": 1000.0})
        assert r.status_code == 201, r.text
        assert r.headers["Location"] == "/api/sources/hi"
        r = await client.post("/api/sinks", json={"id": "second", "name": "Second", "kind": "opus"})
        assert r.status_code == 201, r.text
        r = await client.post("/api/routes", json={
            "id": "hi-second", "source_id": "hi", "sink_id": "second", "gain_db": -3.0})
        assert r.status_code == 201, r.text
        async with open_aiortc_listener() as peer:
            answer = await server.post_offer(await peer.create_offer(), "/api/whep/second")
            assert answer.status_code == 201
            await peer.accept_answer(answer.text)
            await peer.wait_connected()
            assert abs(dominant_frequency(await peer.record(0.5)) - 1000.0) < 3
            r = await client.patch("/api/sources/hi", json={"tone_hz": 700.0, "name": "Mid"})
            assert r.status_code == 200 and r.json()["tone_hz"] == 700.0
            await peer.record(0.2)
            assert abs(dominant_frequency(await peer.record(0.5)) - 700.0) < 3
            sinks = {s["id"]: s for s in (await client.get("/api/sinks")).json()}
            assert sinks["second"]["listeners"] == 1
            r = await client.delete("/api/sinks/second")
            assert r.status_code == 409  # routes and a listener use it
            assert (await client.delete(answer.headers["Location"])).status_code == 200
        r = await client.patch("/api/routes/tone-main", json={"muted": True, "gain_db": -6.5})
        assert r.status_code == 200 and r.json()["muted"] is True
        state = json.loads((tmp_path / "state.json").read_text())
        assert {s["id"] for s in state["graph"]["sources"]} == {"tone", "hi"}
        assert not list(tmp_path.glob(".state.json.*"))  # no temp files left

    async with open_server(config) as server:  # same config, same state_dir
        client = server.client
        sources = {s["id"]: s for s in (await client.get("/api/sources")).json()}
        assert sources["hi"]["tone_hz"] == 700.0 and sources["hi"]["name"] == "Mid"
        routes = {r["id"]: r for r in (await client.get("/api/routes")).json()}
        assert routes["tone-main"]["muted"] is True and routes["tone-main"]["gain_db"] == -6.5
        assert routes["hi-second"]["gain_db"] == -3.0
        assert set(server.service.engine.routes()) == {"tone-main", "hi-second"}
        # delete in order: route, then sink and source
        assert (await client.delete("/api/sources/hi")).status_code == 409
        assert (await client.delete("/api/routes/hi-second")).status_code == 204
        assert (await client.delete("/api/sinks/second")).status_code == 204
        assert (await client.delete("/api/sources/hi")).status_code == 204
        assert (await client.delete("/api/sources/hi")).status_code == 404
        assert (await server.post_offer(synthetic_offer(), "/api/whep/second")).status_code == 404

    async with open_server(config) as server:
        ids = [s["id"] for s in (await server.client.get("/api/sources")).json()]
        assert ids == ["tone"]


async def test_bad_admin_requests(server):
    client = server.client
    cases = [
        ("POST", "/api/sources", {"id": "x", "kind": "tone", "volume": 3}, 400, "volume"),
        ("POST", "/api/sources", {"id": "x", "kind": "laser"}, 400, "source.kind must be one of"),
        # values that once answered 500 (or created the entity first)
        ("POST", "/api/sources", {"id": "x", "kind": "file", "path": 5}, 400,
         "source.path must be a string"),
        ("POST", "/api/sources", {"id": "x", "kind": ["tone"]}, 400, "source.kind"),
        ("POST", "/api/sources", {"id": "x", "kind": "tone", "channels": 2147483648}, 400,
         "source.channels must be between"),
        ("POST", "/api/sinks", {"id": "x", "kind": "opus", "frame_ms": 1e308}, 400,
         "sink.frame_ms must be one of"),
        ("POST", "/api/sources", {"id": "abc\n", "kind": "tone"}, 400, "source.id must be"),
        ("POST", "/api/sources", {"id": "x", "kind": "tone", "name": "a\x00b"}, 400, "name"),
        ("PATCH", "/api/routes/tone-main", {"gain_db": 1e308}, 400, "gain_db"),
        ("POST", "/api/sources", {"id": "bad id!", "kind": "tone"}, 400, "id"),
        ("POST", "/api/sources", {"kind": "tone"}, 400, "id"),
        ("POST", "/api/sources", {"id": "tone", "kind": "tone"}, 409, "exists"),
        ("POST", "/api/sources", {"id": "y", "kind": "tone", "tone_hz": "loud"}, 400, "tone_hz"),
        ("POST", "/api/sinks", {"id": "source", "kind": "opus"}, 400, "reserved"),
        ("POST", "/api/sinks", {"id": "s2", "kind": "opus", "frame_ms": 7.0}, 400, ""),
        ("POST", "/api/routes", {"id": "r", "source_id": "nope", "sink_id": "main"}, 400, "nope"),
        ("POST", "/api/routes", {"id": "r", "source_id": "tone"}, 400, "sink_id"),
        ("PATCH", "/api/routes/tone-main", {"source_id": "x"}, 400, "cannot be changed"),
        ("PATCH", "/api/routes/tone-main", {"gain_db": "x"}, 400, "gain_db"),
        ("PATCH", "/api/routes/tone-main", {"muted": 1}, 400, "muted"),
        ("PATCH", "/api/routes/nope", {"gain_db": 1.0}, 404, "nope"),
        ("PATCH", "/api/sinks/main", {"name": ""}, 400, "name"),
        ("DELETE", "/api/routes/nope", None, 404, "nope"),
    ]
    for method, path, body, status, word in cases:
        r = await client.request(method, path, json=body)
        assert r.status_code == status, (method, path, body, r.status_code, r.text)
        assert word in r.text, (word, r.text)
    r = await client.post("/api/sources", content="{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = await client.post("/api/sources", content="x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await client.post("/api/sources", json=[1, 2])
    assert r.status_code == 400
    json_type = {"Content-Type": "application/json"}
    for raw in ('{"id": "x", "kind": "alsa", "device": "\\ud800"}',   # a lone surrogate
                "[" * 30000 + "]" * 30000,                               # nested 30,000 deep
                '{"id": "x", "kind": "tone", "channels": ' + "9" * 5000 + "}"):
        r = await client.post("/api/sources", content=raw, headers=json_type)
        assert r.status_code == 400, (raw[:40], r.status_code, r.text)
    # nothing of that changed the graph or left a state file behind
    assert set(server.service.engine.sources()) == {"tone"}
    assert set(server.service.engine.sinks()) == {"main"}
    assert server.service.census() == IDLE


async def test_state_from_an_older_config_graph_is_replaced(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        r = await server.client.patch("/api/routes/tone-main", json={"gain_db": -9.0})
        assert r.status_code == 200
    data = {"sources": [{"id": "t2", "kind": "tone", "tone_hz": 300.0}],
            "sinks": [{"id": "main", "kind": "opus"}],
            "routes": [{"id": "t2-main", "source_id": "t2", "sink_id": "main"}]}
    async with open_server(make_config(tmp_path, data=data)) as server:
        routes = (await server.client.get("/api/routes")).json()
        assert [(r["id"], r["gain_db"]) for r in routes] == [("t2-main", 0.0)]


async def test_an_app_on_a_service_the_caller_owns(tmp_path):
    config = make_config(tmp_path)
    async with open_service(config) as service:
        async with open_server(config, service=service) as server:
            assert server.service is service
            r = await server.post_offer(synthetic_offer())
            assert r.status_code == 201
            assert service.census()["sessions"] == 1
        # the server stopped; the service (the caller's) still runs its session
        assert service.census()["sessions"] == 1
    assert len(service.sessions) == 0


@pytest.mark.parametrize("state", [
    {"version": 1, "graph": {"sources": [{"id": "tone", "kind": "tone", "channels": "2"}]}},
    {"version": 1, "graph": {"sources": [{"id": "tone", "kind": "tone", "tone_hz": "440"}]}},
    {"version": 1, "graph": []},
])
async def test_a_damaged_state_file_never_stops_the_appliance(tmp_path, state):
    """It once stopped the start with a cffi TypeError; now it is set aside
    and the appliance comes up on the config's seed graph."""
    (tmp_path / "state.json").write_text(json.dumps(state))
    async with open_server(make_config(tmp_path)) as server:
        sources = (await server.client.get("/api/sources")).json()
        assert [(s["id"], s["channels"], s["tone_hz"]) for s in sources] == [("tone", 2, 440.0)]
        assert (await server.post_offer(synthetic_offer())).status_code == 201
    aside = list(tmp_path.glob("state.json.bad*"))
    assert len(aside) == 1 and json.loads(aside[0].read_text()) == state


async def test_status_shows_each_listeners_health(server):
    async with open_aiortc_listener() as peer:
        r = await server.post_offer(await peer.create_offer())
        assert r.status_code == 201
        await peer.accept_answer(r.text)
        await peer.wait_connected()
        with trio.fail_after(15):   # the peer's RTCP receiver reports arrive about once a second
            while True:
                (health,) = (await server.client.get("/api/status")).json()["sessions"]
                if health["jitter_ms"] is not None and health["rtt_ms"] is not None:
                    break
                await trio.sleep(0.2)
        assert health["kind"] == "sink" and health["id"] == "main"
        assert health["transport"] in ("lean", "webrtcbin") and health["state"] in ("connected", "completed")
        assert health["packets_sent"] > 0 and 0 <= health["fraction_lost"] <= 1
        assert 0 <= health["rtt_ms"] < 1000 and health["session"] in r.headers["Location"]
        # aiortc's offer does not ask for stereo (Chromium's does not either)
        assert health["stereo_offered"] is False
        stereo = await server.post_offer(
            synthetic_offer().replace("minptime=10;useinbandfec=1",
                                      "minptime=10;useinbandfec=1;stereo=1"))
        assert stereo.status_code == 201
        by_session = {h["session"]: h["stereo_offered"]
                      for h in (await server.client.get("/api/status")).json()["sessions"]}
        assert by_session[stereo.headers["Location"].rsplit("/", 1)[1][:8]] is True
        assert (await server.client.delete(stereo.headers["Location"])).status_code == 200
    await server.client.delete(r.headers["Location"])
    assert (await server.client.get("/api/status")).json()["sessions"] == []


async def test_the_last_hour_of_the_log_downloads_for_the_admin_only(tmp_path, monkeypatch):
    """Where there is no journal (not under systemd: here) the process's own
    last hour; under systemd, journalctl's for the unit (a stand-in on PATH
    checks what it is asked)."""
    import logging
    import os

    async with open_server(make_config(tmp_path)) as server:
        logging.getLogger("appliance.test").warning("a line for support %d", 4711)
        r = await server.client.get("/api/logs")
        assert r.status_code == 200 and r.headers["X-Appliance-Log"] == "process"
        assert "attachment" in r.headers["content-disposition"]
        assert "a line for support 4711" in r.text
        stranger = await server.client.get("/api/logs", headers={"Authorization": "Bearer x"})
        assert stranger.status_code == 401
        # under systemd: the unit's journal
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        journalctl = bin_dir / "journalctl"
        journalctl.write_text('#!/bin/sh\necho "journal asked: $*"\n')
        journalctl.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        monkeypatch.setenv("INVOCATION_ID", "0" * 32)
        monkeypatch.setattr("appliance.logs._unit", lambda: "appliance.service")
        r = await server.client.get("/api/logs")
        assert r.headers["X-Appliance-Log"] == "journal"
        assert r.text.startswith("journal asked: --unit appliance.service --since -1h")
