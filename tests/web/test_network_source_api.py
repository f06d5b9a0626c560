"""A network source through the admin API, as the admin adds one: made,
routed to a channel, heard by a real listener, counted in /api/status and
/metrics, kept across a restart; and the values a stranger to the model
might send for it refused with the field named."""
from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.realtime import run_realtime
from tests.support.rtp import gstreamer_sender
from tests.support.scream import ScreamSender, free_udp_port
from tests.web.conftest import heard_hz, make_config, open_server

pytestmark = pytest.mark.trio


async def test_the_admin_adds_a_scream_source_and_a_channel_plays_it(tmp_path):
    port = free_udp_port()
    config = make_config(tmp_path)
    async with open_server(config) as server:
        client = server.client
        r = await client.post("/api/sources", json={
            "id": "pc", "name": "Lectern PC", "kind": "scream", "address": "127.0.0.1",
            "port": port, "allow_from": ["127.0.0.1/32"], "latency_ms": 30})
        assert r.status_code == 201, r.text
        r = await client.post("/api/sinks", json={"id": "pc-ch", "name": "PC", "kind": "opus"})
        assert r.status_code == 201, r.text
        r = await client.post("/api/routes", json={"id": "pc-pc-ch", "source_id": "pc",
                                                   "sink_id": "pc-ch"})
        assert r.status_code == 201, r.text
        sender = ScreamSender("127.0.0.1", port, hz=1000.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            with trio.fail_after(5):
                while (await client.get("/api/status")).json()["network_sources"]["pc"][
                        "buffered_ms"] is None:
                    await trio.sleep(0.05)
            assert abs(await heard_hz(server, "/api/whep/pc-ch") - 1000.0) < 3
            nursery.cancel_scope.cancel()
        sender.close()
        source = (await client.get("/api/sources/pc")).json()
        assert source["network"]["sender"] == "127.0.0.1" and source["network"]["packets"] > 50
        assert source["allow_from"] == ["127.0.0.1/32"] and source["latency_ms"] == 30
        families = {f.name: f for f in text_string_to_metric_families(
            (await client.get("/metrics")).text)}
        taken = [s for s in families["appliance_network_source_datagrams"].samples
                 if s.labels == {"id": "pc", "outcome": "taken"}]
        assert taken and taken[0].value == source["network"]["packets"]
        await server.wait_idle()
    async with open_server(config) as server:   # kept in the saved graph
        source = (await server.client.get("/api/sources/pc")).json()
        assert source["kind"] == "scream" and source["port"] == port
        assert source["network"]["packets"] == 0


@pytest.mark.parametrize("field, value", [
    ("address", "not an address"), ("address", "999.1.1.1"), ("port", 0), ("port", 70000),
    ("port", "4010"), ("interface", "eth0; reboot"), ("interface", "x" * 16),
    ("allow_from", "10.0.0.0/8"), ("allow_from", ["10.0.0.0/33"]), ("allow_from", ["evil"]),
    ("allow_from", ["10.0.0.0/8"] * 33), ("latency_ms", 1), ("latency_ms", 501),
    ("program", "x" * 31), ("program", "caf\u00e9"), ("program", "tab\there"),
    ("encoding", "L8"), ("encoding", "G722"), ("payload_type", 128), ("payload_type", -1),
    ("clock_rate", 16000), ("clock_rate", 192000), ("stream_channels", 0),
    ("stream_channels", 9),
])
async def test_bad_network_settings_are_refused_with_the_field_named(tmp_path, field, value):
    kind = "rtp" if field in ("encoding", "payload_type", "clock_rate", "stream_channels") \
        else "scream"
    async with open_server(make_config(tmp_path)) as server:
        r = await server.client.post("/api/sources", json={
            "id": "net", "name": "Net", "kind": kind, "port": free_udp_port(), field: value})
        assert r.status_code == 400, (field, value, r.status_code, r.text)
        assert field in r.text
        assert "net" not in server.service.engine.sources()


async def test_a_port_another_source_holds_is_refused_and_nothing_is_left(tmp_path):
    port = free_udp_port()
    async with open_server(make_config(tmp_path)) as server:
        body = {"name": "Net", "kind": "scream", "address": "127.0.0.1", "port": port}
        assert (await server.client.post("/api/sources", json={"id": "a", **body})).status_code == 201
        r = await server.client.post("/api/sources", json={"id": "b", **body})
        assert r.status_code == 409 and str(port) in r.text
        assert sorted(server.service.engine.sources()) == ["a", "tone"]
        assert (await server.client.delete("/api/sources/a")).status_code in (200, 204)
        assert (await server.client.post("/api/sources", json={"id": "b", **body})).status_code == 201


async def test_an_rtp_source_made_from_its_sdp_plays_what_gstreamer_sends(tmp_path):
    """The admin pastes the stream's SDP (as a device's page shows it); the
    source takes its address, port and format from it, and its source filter
    as allow_from."""
    port = free_udp_port()
    sdp = (f"v=0\no=- 1 1 IN IP4 127.0.0.1\ns=Desk\nc=IN IP4 127.0.0.1\nt=0 0\n"
           f"m=audio {port} RTP/AVP 98\na=rtpmap:98 L24/48000/2\na=ptime:1\n"
           f"a=source-filter: incl IN IP4 127.0.0.1 127.0.0.1\n")
    async with open_server(make_config(tmp_path)) as server:
        client = server.client
        r = await client.post("/api/sources", json={"id": "desk", "sdp": sdp, "latency_ms": 10})
        assert r.status_code == 201, r.text
        source = r.json()
        assert (source["kind"], source["name"], source["port"], source["payload_type"],
                source["encoding"], source["latency_ms"], source["allow_from"]) == \
            ("rtp", "Desk", port, 98, "L24", 10, ["127.0.0.1"])
        await client.post("/api/sinks", json={"id": "desk-ch", "kind": "opus"})
        await client.post("/api/routes", json={"id": "r", "source_id": "desk",
                                               "sink_id": "desk-ch"})
        command = gstreamer_sender("127.0.0.1", port, pt=98)
        async with trio.open_nursery() as nursery:
            sender = await nursery.start(run_realtime, command)
            assert abs(await heard_hz(server, "/api/whep/desk-ch") - 1000.0) < 3
            sender.kill()
        network = (await client.get("/api/status")).json()["network_sources"]["desk"]
        assert network["packets"] > 100 and network["malformed"] == 0
        await server.wait_idle()


@pytest.mark.parametrize("sdp", ["", "v=0\n", "v=0\nm=audio 5004 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n",
                                 42, ["v=0"], "v=0\n" + "x" * 20000])
async def test_an_sdp_that_describes_nothing_this_box_takes_is_refused(tmp_path, sdp):
    async with open_server(make_config(tmp_path)) as server:
        r = await server.client.post("/api/sources", json={"id": "desk", "sdp": sdp})
        assert r.status_code == 400 and r.text.startswith("sdp: "), r.text
        assert "desk" not in server.service.engine.sources()


@pytest.mark.parametrize("fields, says", [
    ({"encoding": "opus", "clock_rate": 44100}, "Opus is not carried at 44100 Hz"),
    ({"encoding": "opus", "stream_channels": 6}, "Opus is not carried"),
    ({"encoding": "PCMU", "clock_rate": 48000}, "PCMU is not carried at 48000 Hz"),
    ({"encoding": "L24", "clock_rate": 8000}, "L16/L24 is not carried at 8000 Hz"),
])
async def test_a_format_its_encoding_is_never_carried_in_is_refused(tmp_path, fields, says):
    async with open_server(make_config(tmp_path)) as server:
        r = await server.client.post("/api/sources", json={
            "id": "net", "kind": "rtp", "port": free_udp_port(), **fields})
        assert r.status_code == 400 and says in r.text, r.text
        assert "net" not in server.service.engine.sources()


async def test_a_stream_on_a_ptp_clock_says_so_and_whether_linuxptp_runs_here(tmp_path,
                                                                              monkeypatch):
    from appliance import service as service_module

    sdp = ("v=0\no=- 1 1 IN IP4 127.0.0.1\ns=Desk\nc=IN IP4 239.69.1.10/32\nt=0 0\n"
           "m=audio 5004 RTP/AVP 97\na=rtpmap:97 L24/48000/2\n"
           "a=ts-refclk:ptp=IEEE1588-2008:00-1D-C1-FF-FE-0E-10-4C:0\n")
    async with open_server(make_config(tmp_path)) as server:
        r = await server.client.post("/api/sources", json={"id": "desk", "sdp": sdp,
                                                           "port": free_udp_port()})
        assert r.status_code == 201 and r.json()["refclk"].startswith("ptp=IEEE1588-2008:")
        ptp = (await server.client.get("/api/status")).json()["network_sources"]["desk"]["ptp"]
        assert ptp == {"clock": "IEEE1588-2008:00-1D-C1-FF-FE-0E-10-4C:0",
                       "linuxptp_running": False}
        # a process called ptp4l (this one is sleep under that name)
        fake = tmp_path / "ptp4l"
        fake.symlink_to(shutil.which("sleep"))
        async with trio.open_nursery() as nursery:
            process = await nursery.start(partial(trio.run_process, [str(fake), "30"],
                                                  check=False))
            # started means forked: the name is ptp4l once its exec is done
            # (on a busy machine that came after the status was asked)
            comm = Path(f"/proc/{process.pid}/comm")
            with trio.fail_after(10):
                while comm.read_text().strip() != "ptp4l":
                    await trio.sleep(0.01)
            monkeypatch.setattr(service_module, "_ptp4l_seen", (-1e9, False))
            status = (await server.client.get("/api/status")).json()
            assert status["network_sources"]["desk"]["ptp"]["linuxptp_running"] is True
            process.kill()


# ---- editing a network source in place ---------------------------------------------------

async def test_a_network_source_is_edited_in_place_and_its_channel_plays_on(tmp_path):
    """PATCH of a network field makes the source again with its routes: a
    listener of its channel stays connected and hears the new sender; a
    refused value (a port another source holds) leaves it as it was."""
    from tests.support.webrtc import open_aiortc_listener

    first, second, taken = free_udp_port(), free_udp_port(), free_udp_port()
    async with open_server(make_config(tmp_path)) as server:
        client = server.client
        for body in ({"id": "pc", "kind": "scream", "address": "127.0.0.1", "port": first,
                      "allow_from": ["127.0.0.1"]},
                     {"id": "other", "kind": "scream", "address": "127.0.0.1", "port": taken,
                      "allow_from": ["127.0.0.1"]}):
            assert (await client.post("/api/sources", json=body)).status_code == 201
        assert (await client.post("/api/sinks", json={"id": "ch", "kind": "opus"})).status_code == 201
        assert (await client.post("/api/routes", json={"id": "pc-ch", "source_id": "pc",
                                                       "sink_id": "ch"})).status_code == 201
        old, new = ScreamSender("127.0.0.1", first, hz=500.0), \
            ScreamSender("127.0.0.1", second, hz=1500.0)
        async with trio.open_nursery() as nursery, open_aiortc_listener() as listener:
            nursery.start_soon(old.run)
            nursery.start_soon(new.run)
            answer = await server.post_offer(await listener.create_offer(), "/api/whep/ch")
            assert answer.status_code == 201
            await listener.accept_answer(answer.text)
            await listener.wait_connected()
            from tests.support.webrtc import dominant_frequency
            assert abs(dominant_frequency(await listener.record(0.4)) - 500.0) < 3
            r = await client.patch("/api/sources/pc", json={"port": second, "latency_ms": 30})
            assert r.status_code == 200, r.text
            assert r.json()["port"] == second and r.json()["latency_ms"] == 30
            with trio.fail_after(5):   # the same listener, the new sender
                while abs(dominant_frequency(await listener.record(0.3)) - 1500.0) > 3:
                    pass
            assert listener.connection_state == "connected"
            r = await client.patch("/api/sources/pc", json={"port": taken})
            assert r.status_code == 409, r.text
            source = (await client.get("/api/sources/pc")).json()
            assert source["port"] == second
            assert abs(dominant_frequency(await listener.record(0.4)) - 1500.0) < 3
            await client.delete(answer.headers["Location"])
            nursery.cancel_scope.cancel()
        old.close()
        new.close()
        assert (await client.get("/api/routes/pc-ch")).status_code == 200
        # fields a network source does not have, or that cannot change
        for body, text in (({"tone_hz": 300}, "tone sources"),
                           ({"kind": "rtp"}, "cannot be changed"),
                           ({"port": 0}, "port")):
            r = await client.patch("/api/sources/pc", json=body)
            assert r.status_code == 400 and text in r.text, (body, r.text)
        r = await client.patch("/api/sources/tone", json={"port": 5000})
        assert r.status_code == 400 and "only network sources" in r.text
        await server.wait_idle()
    async with open_server(make_config(tmp_path)) as server:   # the edit was saved
        assert (await server.client.get("/api/sources/pc")).json()["port"] == second


async def test_a_network_source_heard_on_its_own_is_not_edited_under_its_listener(tmp_path):
    port = free_udp_port()
    async with open_server(make_config(tmp_path)) as server:
        r = await server.client.post("/api/sources", json={
            "id": "pc", "kind": "scream", "address": "127.0.0.1", "port": port,
            "allow_from": ["127.0.0.1"], "public": True})
        assert r.status_code == 201
        from tests.support.webrtc import open_aiortc_listener
        async with open_aiortc_listener() as listener:
            answer = await server.post_offer(await listener.create_offer(), "/api/whep/source/pc")
            assert answer.status_code == 201
            r = await server.client.patch("/api/sources/pc", json={"latency_ms": 50})
            assert r.status_code == 409 and "on its own" in r.text
            await server.client.delete(answer.headers["Location"])
        await server.wait_idle()
        r = await server.client.patch("/api/sources/pc", json={"latency_ms": 50})
        assert r.status_code == 200 and r.json()["latency_ms"] == 50
