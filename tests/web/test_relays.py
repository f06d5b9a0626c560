"""Relays on Janus: the box creates a streaming mountpoint on a real Janus
(Debian's, started by the test on loopback) through Janus's HTTP API and
forwards the channel's Opus to it; a WebRTC listener watching the
mountpoint through Janus hears the box's tone. Janus killed: the relay is
unhealthy and the box's own listeners carry on; Janus back: the mountpoint
is made again. A "Janus" that answers garbage, hangs or sends a huge body
gets a clear error and a bounded retry."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from appliance import relays as relays_module

from support import janus as janus_support
from support.janus import Janus, JanusClient
from support.namespaces import can_unshare, run_scenario
from support.webrtc import open_aiortc_listener, synthetic_offer
from tests.web.conftest import IDLE, heard_hz, make_config, open_server

pytestmark = [pytest.mark.trio,
              pytest.mark.skipif(not janus_support.available(), reason="needs Debian's janus")]


async def relay_status(server, relay_id: str, predicate, timeout: float = 20) -> dict:
    """The relay's status once ``predicate`` holds for it."""
    with trio.fail_after(timeout):
        while True:
            for status in (await server.client.get("/api/relays")).json():
                if status["id"] == relay_id and predicate(status):
                    return status
            await trio.sleep(0.05)


def is_up(status: dict) -> bool:
    return status["state"] == "up" and bool(status["carried"])


async def janus_receives(janus: Janus, mountpoint: int) -> dict:
    """The mountpoint's info once Janus has taken (and, with SRTP, decrypted)
    its RTP lately: ``age_ms`` is the time since its last packet.
    (A WebRTC listener watching it is not here: Janus gathers no loopback
    candidates, and the tests stay on loopback.)"""
    client = JanusClient(janus.url, janus.api_secret)
    try:
        await client.attach_streaming()
        with trio.fail_after(10):
            while True:
                info = (await client.message({"request": "info", "id": mountpoint}))["info"]
                media = info["media"][0]
                if media.get("age_ms") is not None and media["age_ms"] < 200:
                    return info
                await trio.sleep(0.05)
    finally:
        await client.aclose()


@pytest.mark.parametrize("srtp", ["off", "on"])
async def test_a_relay_carries_a_channel_to_janus_listeners(tmp_path: Path, srtp):
    janus = Janus(tmp_path, admin_key="admin-key-1")
    await janus.start()
    try:
        async with open_server(make_config(tmp_path / "box")) as box:
            assert (await box.client.post("/api/sinks", json={"id": "solo", "kind": "opus"})
                    ).status_code == 201
            r = await box.client.post("/api/relays", json={
                "id": "janus", "url": janus.url, "channels": ["main", "solo"],
                "admin_key": "admin-key-1", "srtp": srtp})
            assert r.status_code == 201, r.text
            status = await relay_status(box, "janus", is_up)
            carried = status["carried"][0]
            assert [c["sink_id"] for c in status["carried"]] == ["main", "solo"]
            assert carried["srtp"] == (srtp == "on")
            info = await janus_receives(janus, carried["mountpoint"])
            assert info["media"][0]["codec"] == "opus" and info["viewers"] == 0
            assert "New audio stream" in janus.log()
            status = await relay_status(box, "janus", lambda s: s["carried"][0]["packets_sent"])
            assert "admin-key-1" not in str(status)
            box_status = (await box.client.get("/api/status")).json()
            assert box_status["relays"][0]["id"] == "janus"
            assert box_status["listeners"]["total"] == 0   # a forward is not a listener
            # a channel is busy while it is carried
            r = await box.client.delete("/api/sinks/solo")
            assert r.status_code == 409, r.text
            assert (await box.client.delete("/api/relays/janus")).status_code == 204
            info = JanusClient(janus.url)
            await info.attach_streaming()
            listed = await info.message({"request": "list"})
            await info.aclose()
            assert listed["list"] == []      # its mountpoints went with it
            assert (await box.client.delete("/api/sinks/solo")).status_code == 204
            assert (await box.wait_idle()) == IDLE
    finally:
        await janus.stop()


async def test_a_relay_that_dies_is_unhealthy_and_its_mountpoint_comes_back(tmp_path: Path):
    janus = Janus(tmp_path, api_secret="api-secret-1")
    await janus.start()
    try:
        async with open_server(make_config(tmp_path / "box")) as box:
            r = await box.client.post("/api/relays", json={
                "id": "janus", "url": janus.url, "channels": ["main"],
                "api_secret": "api-secret-1"})
            assert r.status_code == 201, r.text
            first = await relay_status(box, "janus", is_up)
            await janus.stop()
            down = await relay_status(box, "janus", lambda s: s["state"] == "unhealthy")
            assert down["error"] and down["carried"] == []
            # the box's own listeners never notice
            assert abs(await heard_hz(box) - 440.0) < 3
            await janus.start()
            again = await relay_status(box, "janus", lambda s: is_up(s) and s["attempts"] > 1,
                                       timeout=40)
            assert again["carried"][0]["mountpoint"] == first["carried"][0]["mountpoint"]
            await janus_receives(janus, again["carried"][0]["mountpoint"])
            assert (await box.client.delete("/api/relays/janus")).status_code == 204
            assert (await box.wait_idle()) == IDLE
    finally:
        await janus.stop()


async def test_a_secret_goes_only_over_https_or_to_this_machine(tmp_path: Path):
    async with open_server(make_config(tmp_path / "box")) as box:
        r = await box.client.post("/api/relays", json={
            "id": "far", "url": "http://192.0.2.7:8088/janus", "channels": ["main"],
            "api_secret": "s"})
        assert r.status_code == 400 and "https" in r.text
        r = await box.client.post("/api/relays", json={
            "id": "far", "url": "https://192.0.2.7/janus", "channels": ["nope"]})
        assert r.status_code == 404
        assert (await box.client.get("/api/relays")).json() == []


@pytest.mark.parametrize("srtp", ["auto", "on"])
async def test_an_srtp_key_goes_only_over_https_or_to_this_machine(tmp_path: Path, monkeypatch,
                                                                  srtp):
    """SRTP's key travels in the mountpoint request, beside the RTP it
    protects: to a relay off the LAN (auto) or told to use SRTP (on) over
    plain http://, the box refuses before it sends anything. (The address is
    never reached; tests may not reach beyond this machine, so "off the LAN"
    is what the box is told of this one.)"""
    address = "10.20.30.40"
    monkeypatch.setattr(relays_module, "on_lan", lambda ip: ip != address)
    async with open_server(make_config(tmp_path / "box")) as box:
        r = await box.client.post("/api/relays", json={
            "id": "far", "url": f"http://{address}:8088/janus", "channels": ["main"],
            "srtp": srtp})
        assert r.status_code == 201, r.text
        with trio.fail_after(10):
            while not (status := (await box.client.get("/api/relays")).json()[0])["error"]:
                await trio.sleep(0.05)
        assert "in the clear" in status["error"] and "https://" in status["error"], status
        assert status["carried"] == [] and status["state"] != "up"
        assert (await box.client.delete("/api/relays/far")).status_code == 204
        assert (await box.wait_idle()) == IDLE


async def where(box, sink_id: str = "main", **params) -> dict:
    r = await box.client.get(f"/api/listen/where/{sink_id}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    return r.json()


async def test_the_box_sends_new_listeners_to_the_least_loaded_relay_open_to_them(
        tmp_path: Path):
    """While the box has room a channel plays from the box; "relays first"
    (or a full box) sends the listen page to a healthy Janus relay carrying
    it, the least loaded one, by its listen_url; a relay with Janus's
    api_secret is never offered (listeners cannot use that API), nor one
    the listener just lost. A standard WHEP client is served as before."""
    janus = Janus(tmp_path)
    await janus.start()
    try:
        async with open_server(make_config(tmp_path / "box", max_listeners=1)) as box:
            public = "http://relay.example:8088/janus"
            for relay_id, extra in (("a", {"listen_url": public}), ("b", {}),
                                    ("closed", {"api_secret": "s3cret"})):
                r = await box.client.post("/api/relays", json={
                    "id": relay_id, "url": janus.url, "channels": ["main"], **extra})
                assert r.status_code == 201, r.text
                await relay_status(box, relay_id, is_up)
            statuses = {s["id"]: s for s in (await box.client.get("/api/relays")).json()}
            assert statuses["closed"]["for_listeners"] is False
            assert statuses["a"]["for_listeners"] and statuses["a"]["listen_url"] == public
            assert "s3cret" not in str(statuses)
            assert await where(box) == {"box": True}
            r = await box.client.patch("/api/sinks/main", json={"relays_first": True})
            assert r.status_code == 200, r.text
            channels = (await box.client.get("/api/listen/channels")).json()
            assert channels[0]["relays_first"] is True
            sent = [(await where(box))["janus"] for _ in range(4)]
            mountpoints = {c["id"]: c["carried"][0]["mountpoint"] for c in statuses.values()}
            assert sorted(s["relay"] for s in sent) == ["a", "a", "b", "b"]   # spread out
            for s in sent:
                assert s["mountpoint"] == mountpoints[s["relay"]]
                assert s["url"] == (public if s["relay"] == "a" else janus.url)
            assert (await where(box, avoid="a"))["janus"]["relay"] == "b"
            # a standard WHEP client: no WHEP relay, so the box serves it
            r = await box.post_offer(synthetic_offer())
            assert r.status_code == 201, r.text
            await box.client.delete(r.headers["Location"])
            # the box full (its one listener connected), the channel as usual
            assert (await box.client.patch("/api/sinks/main", json={"relays_first": False})
                    ).status_code == 200
            assert await where(box) == {"box": True}
            async with open_aiortc_listener() as peer:
                r = await box.post_offer(await peer.create_offer())
                assert r.status_code == 201, r.text
                await peer.accept_answer(r.text)
                await peer.wait_connected()
                assert (await where(box))["janus"]["relay"] in ("a", "b")
                r = await box.post_offer(synthetic_offer())
                assert r.status_code == 503          # no WHEP relay: as before
                await box.client.delete(box.service.sessions.answered()[0].url)
            # the worst values
            assert (await box.client.get("/api/listen/where/nope")).status_code == 404
            r = await box.client.get("/api/listen/where/main", params={"avoid": "x" * 5000})
            assert r.status_code == 400
            r = await box.client.get("/api/listen/where/" + "x" * 3000)
            assert r.status_code in (404, 414)
            r = await box.client.post("/api/relays", json={
                "id": "both", "url": janus.url, "channels": ["main"], "api_secret": "s",
                "listen_url": public})
            assert r.status_code == 400 and "api_secret" in r.text
            r = await box.client.post("/api/relays", json={
                "id": "bad", "url": janus.url, "channels": ["main"],
                "listen_url": "javascript:alert(1)"})
            assert r.status_code == 400 and "listen_url" in r.text
            for relay_id in ("a", "b", "closed"):
                assert (await box.client.delete(f"/api/relays/{relay_id}")).status_code == 204
            assert (await box.wait_idle()) == IDLE
    finally:
        await janus.stop()


GARBAGE = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!"
HUGE = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 1000
REDIRECT = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /janus\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("reply, error", [
    (GARBAGE, "not JSON"), (HUGE, "over 64 KB"), (REDIRECT, "answered 307"),
    (None, "did not answer"),                      # it hangs
])
async def test_a_misbehaving_relay_gets_a_clear_error_and_a_bounded_retry(
        tmp_path: Path, monkeypatch, reply, error):
    from appliance import outbound, relays
    monkeypatch.setattr(outbound, "BACKOFF_S", (0.2,))
    monkeypatch.setattr(relays, "HTTP_TIMEOUT_S", 0.5)

    async def fake_janus(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        if reply is None:
            await trio.sleep_forever()
        await stream.send_all(reply)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, fake_janus, 0,
                                                          host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with open_server(make_config(tmp_path / "box")) as box:
            r = await box.client.post("/api/relays", json={
                "id": "bad", "url": f"http://127.0.0.1:{port}/janus", "channels": ["main"]})
            assert r.status_code == 201, r.text
            status = await relay_status(box, "bad", lambda s: s["attempts"] >= 3 and s["error"])
            assert error in status["error"] and status["state"] in ("unhealthy", "connecting")
            assert abs(await heard_hz(box) - 440.0) < 3      # the box's listeners carry on
            assert (await box.client.delete("/api/relays/bad")).status_code == 204
            assert (await box.wait_idle()) == IDLE
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(not can_unshare(), reason="needs network namespaces (unshare -n as root)")
async def test_listeners_sent_to_janus_hear_the_channel_and_fail_over_within_3_s():
    """In a network namespace of the test's own (tests/support/janus_check.py:
    Janus gathers no candidates on loopback): at the box's cap, a listener
    that asks where to listen is sent to a Janus relay, watches the
    mountpoint through Janus's API and hears 440 Hz; Janus's viewer count
    reaches the box's status. Its relay killed, it hears 440 Hz from the
    other relay within 3 s, and the box marks the dead one unhealthy."""
    script = Path(__file__).parents[1] / "support" / "janus_check.py"
    heard = await run_scenario(script)
    assert heard["where_with_room"] == {"box": True}
    assert heard["first"] == "box" and heard["second"] in ("j1", "j2")
    assert abs(heard["second_hz"] - 440.0) < 3
    assert heard["viewers"] == 1
    assert heard["after"] in ("j1", "j2") and heard["after"] != heard["second"]
    assert abs(heard["after_hz"] - 440.0) < 3
    assert heard["failover_s"] < 3.0
    assert heard["lost_state"] in ("unhealthy", "connecting")


async def test_a_relay_in_the_config_file_starts_with_the_box_and_stays(tmp_path: Path):
    """A ``[[relays]]`` table: carried from the start, shown as the config's,
    not removable through the API; a saved relay of the same id (made
    through the API before the config named it) is left out."""
    janus = Janus(tmp_path)
    await janus.start()
    try:
        saved = make_config(tmp_path / "box")
        async with open_server(saved) as box:
            r = await box.client.post("/api/relays", json={
                "id": "janus", "url": "http://127.0.0.1:9/janus", "channels": ["main"]})
            assert r.status_code == 201, r.text
        config = make_config(tmp_path / "box", data={"relays": [
            {"id": "janus", "url": janus.url, "channels": ["main"]}]})
        async with open_server(config) as box:
            status = await relay_status(box, "janus", is_up)
            assert status["in_config"] is True and status["url"] == janus.url
            await janus_receives(janus, status["carried"][0]["mountpoint"])
            r = await box.client.delete("/api/relays/janus")
            assert r.status_code == 409 and "config file" in r.text, r.text
            assert [s["id"] for s in (await box.client.get("/api/relays")).json()] == ["janus"]
    finally:
        await janus.stop()
