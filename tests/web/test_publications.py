"""Publications (WHIP out): box A publishes a channel to box B's WHIP
endpoint and B's listeners hear A's tone; servers that refuse, redirect in
a loop, hang or answer garbage get a clear error and a bounded retry, and
A's own listeners never notice."""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from aioice import stun

import pytest
import trio

from appliance import outbound, publications
from support import janus as janus_support
from support import whip_server
from tests.web.conftest import IDLE, heard_hz, make_config, open_server
from tests.support.namespaces import can_unshare, run_scenario
from tests.web.test_whip import add_booth, receiving

pytestmark = pytest.mark.trio


async def wait_state(server, publication_id: str, *states: str, timeout: float = 20) -> dict:
    with trio.fail_after(timeout):
        while True:
            for status in (await server.client.get("/api/publications")).json():
                if status["id"] == publication_id and status["state"] in states:
                    return status
            await trio.sleep(0.05)


async def failed_attempts(server, attempts: int) -> dict:
    """The first publication's status once it has made ``attempts`` and
    says why the last one failed."""
    with trio.fail_after(20):
        while True:
            status = (await server.client.get("/api/publications")).json()[0]
            if status["attempts"] >= attempts and status["error"]:
                return status
            await trio.sleep(0.05)


async def test_box_a_publishes_a_channel_and_box_bs_listeners_hear_it(tmp_path):
    async with open_server(make_config(tmp_path / "b")) as b:
        token = await add_booth(b)
        async with open_server(make_config(tmp_path / "a")) as a:
            r = await a.client.post("/api/publications", json={
                "id": "to-b", "sink_id": "main", "url": f"{b.url}/api/whip/booth",
                "token": token})
            assert r.status_code == 201, r.text
            status = await wait_state(a, "to-b", "live")
            assert status["resource"].startswith(f"{b.url}/api/whip/booth/")
            await receiving(b)
            assert abs(await heard_hz(b, "/api/whep/fr") - 440.0) < 3   # A's tone, on B
            assert b.service.publishers.by_source["booth"].connected
            with trio.fail_after(5):   # what it sent is read once a second
                while not (status := await wait_state(a, "to-b", "live"))["bitrate_bps"]:
                    await trio.sleep(0.1)
            assert status["bitrate_bps"] > 50_000 and token not in str(status)
            a_status = (await a.client.get("/api/status")).json()
            assert a_status["publications"][0]["id"] == "to-b"
            assert a_status["listeners"]["total"] == 0   # a publication is not a listener
            publisher = b.service.publishers.by_source["booth"]
            assert (await a.client.delete("/api/publications/to-b")).status_code == 204
            with trio.fail_after(10):
                await publisher.done.wait()
            assert publisher.end_reason in ("deleted", "ice closed")
            assert (await a.client.get("/api/publications")).json() == []
            assert (await a.wait_idle()) == IDLE
        assert (await b.wait_idle()) == IDLE


async def test_a_publication_is_saved_and_starts_again_with_the_box(tmp_path):
    async with open_server(make_config(tmp_path / "b")) as b:
        token = await add_booth(b)
        config = make_config(tmp_path / "a")
        async with open_server(config) as a:
            r = await a.client.post("/api/publications", json={
                "id": "to-b", "sink_id": "main", "url": f"{b.url}/api/whip/booth",
                "token": token})
            assert r.status_code == 201
            await wait_state(a, "to-b", "live")
        async with open_server(config) as a:
            await wait_state(a, "to-b", "live")
            backup = (await a.client.get("/api/backup")).json()
            assert backup["sections"]["publications"]["to-b"]["url"].endswith("/booth")


async def test_a_refusal_is_shown_with_the_servers_status_and_body_and_retried(
        tmp_path, monkeypatch):
    monkeypatch.setattr(outbound, "BACKOFF_S", (0.2,))   # appliance.outbound: every retry
    async with open_server(make_config(tmp_path / "b")) as b:
        await add_booth(b)
        async with open_server(make_config(tmp_path / "a")) as a:
            r = await a.client.post("/api/publications", json={
                "id": "to-b", "sink_id": "main", "url": f"{b.url}/api/whip/booth",
                "token": "w" * 32})
            assert r.status_code == 201
            status = await failed_attempts(a, 3)
            assert status["error"].startswith("the server answered 401: publishing into")
            # A's own listeners are untouched
            assert abs(await heard_hz(a) - 440.0) < 3
            assert (await a.client.delete("/api/publications/to-b")).status_code == 204
        assert b.service.publishers.by_source == {}


# ---- servers that misbehave --------------------------------------------------------------

async def canned_server(response: bytes | None, *, task_status=trio.TASK_STATUS_IGNORED):
    """An HTTP server on loopback that answers every request with ``response``
    (None: reads the request and never answers)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve(stream):
        async with stream:
            if await whip_server.read_http_request(stream) is None:
                return
            if response is None:
                await trio.sleep_forever()
            await stream.send_all(response.replace(b"PORT", str(port).encode()))

    task_status.started(port)
    await trio.serve_listeners(serve, listeners)


@pytest.mark.parametrize("response, error", [
    (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:PORT/again\r\n"
     b"Content-Length: 0\r\n\r\n", "redirects in a loop"),
    (b"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\nLocation: /x\r\n"
     b"Content-Length: 8\r\n\r\nv=0\r\nzzz", "the server's answer was refused"),
    (b"HTTP/1.1 201 Created\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi",
     "not application/sdp"),
    (b"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\nContent-Length: 100000\r\n\r\n"
     + b"a" * 100000, "over 64 KB"),
    (b"garbage\r\n\r\n", "cannot reach the server"),
    (None, "cannot reach the server"),
])
async def test_a_misbehaving_server_gets_a_clear_error_and_a_bounded_retry(
        tmp_path, monkeypatch, response, error):
    monkeypatch.setattr(outbound, "BACKOFF_S", (0.2,))   # appliance.outbound: every retry
    monkeypatch.setattr(publications, "HTTP_TIMEOUT_S", 1.0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(canned_server, response)
        async with open_server(make_config(tmp_path)) as a:
            r = await a.client.post("/api/publications", json={
                "id": "bad", "sink_id": "main", "url": f"http://127.0.0.1:{port}/whip"})
            assert r.status_code == 201
            status = await failed_attempts(a, 2)
            assert error in status["error"], status
            assert abs(await heard_hz(a) - 440.0) < 3
            assert (await a.client.delete("/api/publications/bad")).status_code == 204
            assert (await a.wait_idle()) == IDLE
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("body, field", [
    ({"id": "x", "sink_id": "main", "url": "ftp://example.org/"}, "url"),
    ({"id": "x", "sink_id": "main", "url": "http:///nohost"}, "url"),
    ({"id": "x", "sink_id": "main", "url": "http://h:99999999/"}, "url"),
    ({"id": "x", "sink_id": "main", "url": "http://h/\x00"}, "url"),
    ({"id": "x", "sink_id": "nothing", "url": "http://h/"}, "nothing"),
    ({"id": "x", "sink_id": "main", "url": "http://h/", "bogus": 1}, "bogus"),
    ({"id": "../x", "sink_id": "main", "url": "http://h/"}, "id"),
    ({"id": "x", "sink_id": "main", "url": "http://h/", "token": 5}, "token"),
    ({"id": "x", "sink_id": "main", "url": "http://h/", "tls_ca": "not a pem"}, "tls_ca"),
    ({"id": "x", "sink_id": "main", "url": "http://h/", "relay_whep_url": "javascript:x"},
     "relay_whep_url"),
    ({"id": "x", "sink_id": "tone", "url": "http://h/"}, "tone"),
    # a token in the clear on the LAN: refused before anything is sent
    ({"id": "x", "sink_id": "main", "url": "http://192.0.2.7/api/whip/b", "token": "t" * 32},
     "https://"),
])
async def test_bad_publications_are_refused_with_the_field_named(tmp_path, body, field):
    async with open_server(make_config(tmp_path)) as a:
        r = await a.client.post("/api/publications", json=body)
        assert r.status_code in (400, 404), r.text
        assert field in r.text
        assert (await a.client.get("/api/publications")).json() == []


async def test_a_full_box_sends_new_listeners_to_the_box_it_publishes_to(tmp_path):
    """Box A (room for one listener) publishes "main" into box B's booth,
    heard on B's channel "fr": a second listener of A's "main" gets 307 to
    B's WHEP address, follows it with the same POST, and hears A's tone."""
    from tests.support.webrtc import dominant_frequency, open_aiortc_listener

    async with open_server(make_config(tmp_path / "b")) as b:
        token = await add_booth(b)
        async with open_server(make_config(tmp_path / "a", max_listeners=1)) as a:
            overflow = f"{b.url}/api/whep/fr"
            r = await a.client.post("/api/publications", json={
                "id": "to-b", "sink_id": "main", "url": f"{b.url}/api/whip/booth",
                "token": token, "relay_whep_url": overflow})
            assert r.status_code == 201, r.text
            async with open_aiortc_listener() as first, open_aiortc_listener() as second:
                r = await a.post_offer(await first.create_offer())
                assert r.status_code == 201
                await first.accept_answer(r.text)
                await first.wait_connected()
                offer = await second.create_offer()
                # not live yet, or live: a full box sends to B only once it is live
                await wait_state(a, "to-b", "live")
                await receiving(b)
                r = await a.post_offer(offer)
                assert r.status_code == 307 and r.headers["Location"] == overflow
                r = await a.client.post(r.headers["Location"], content=offer,
                                        headers={"Content-Type": "application/sdp"})
                assert r.status_code == 201, r.text
                await second.accept_answer(r.text)
                await second.wait_connected()
                assert abs(dominant_frequency(await second.record(0.5)) - 440.0) < 3
                assert b.service.listener_counts()["sinks"]["fr"] == 1
            r = await a.client.delete("/api/publications/to-b")
            assert r.status_code == 204
            async with open_aiortc_listener() as third:   # not published: full is full
                async with open_aiortc_listener() as fourth:
                    r = await a.post_offer(await third.create_offer())
                    assert r.status_code == 201
                    await third.accept_answer(r.text)
                    await third.wait_connected()
                    r = await a.post_offer(await fourth.create_offer())
                    assert r.status_code == 503
            await a.wait_idle()
        await b.wait_idle()


async def test_a_published_channel_cannot_be_deleted_under_its_publication(tmp_path):
    async with open_server(make_config(tmp_path / "b")) as b:
        token = await add_booth(b)
        async with open_server(make_config(tmp_path / "a")) as a:
            assert (await a.client.post("/api/sinks", json={"id": "solo", "kind": "opus"})
                    ).status_code == 201
            r = await a.client.post("/api/publications", json={
                "id": "to-b", "sink_id": "solo", "url": f"{b.url}/api/whip/booth",
                "token": token})
            assert r.status_code == 201
            await wait_state(a, "to-b", "live")
            r = await a.client.delete("/api/sinks/solo")
            assert r.status_code == 409 and "publication" in r.text, r.text
            assert (await a.client.delete("/api/publications/to-b")).status_code == 204
            assert (await a.client.delete("/api/sinks/solo")).status_code == 204
            assert (await a.wait_idle()) == IDLE


async def test_a_location_that_is_no_url_is_an_error_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(outbound, "BACKOFF_S", (0.2,))   # appliance.outbound: every retry
    response = (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://[::1\r\n"
                b"Content-Length: 0\r\n\r\n")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(canned_server, response)
        async with open_server(make_config(tmp_path)) as a:
            r = await a.client.post("/api/publications", json={
                "id": "bad", "sink_id": "main", "url": f"http://127.0.0.1:{port}/whip"})
            assert r.status_code == 201
            status = await failed_attempts(a, 2)
            assert "failed" in status["error"] or "reach" in status["error"], status
            assert abs(await heard_hz(a) - 440.0) < 3
            await a.client.delete("/api/publications/bad")
        nursery.cancel_scope.cancel()


async def test_two_boxes_set_up_by_their_config_files_alone_send_overflow_from_a_to_b(tmp_path):
    """The arena's settings (docs/API.md): B's config has a whip source for
    A, A's config publishes "main" there with B's WHEP address for its
    overflow. No admin request sets anything: a listener that full A sends
    on with 307 hears A's tone from B. A config publication is fixed: shown
    as such, not removed or replaced through the API, not in the saved state."""
    import tomllib

    from tests.support.webrtc import dominant_frequency, open_aiortc_listener

    token = "publish-token-for-box-a-0123456789"
    b_toml = f'''
[[sources]]
id = "from_a"
kind = "whip"
public = true
publish_token = "{token}"

[[sinks]]
id = "hall"
kind = "opus"

[[routes]]
id = "from_a-hall"
source_id = "from_a"
sink_id = "hall"
'''
    async with open_server(make_config(tmp_path / "b", data=tomllib.loads(b_toml))) as b:
        a_toml = f'''
[[publications]]
id = "to-b"
sink_id = "main"
url = "{b.url}/api/whip/from_a"
token = "{token}"
relay_whep_url = "{b.url}/api/whep/hall"
'''
        async with open_server(make_config(tmp_path / "a", data=tomllib.loads(a_toml),
                                           max_listeners=1)) as a:
            status = await wait_state(a, "to-b", "live")
            assert status["in_config"] is True and token not in str(status)
            await receiving(b, "from_a")
            async with open_aiortc_listener() as first, open_aiortc_listener() as second:
                r = await a.post_offer(await first.create_offer())
                assert r.status_code == 201
                await first.accept_answer(r.text)
                await first.wait_connected()
                offer = await second.create_offer()
                r = await a.post_offer(offer)
                assert r.status_code == 307, r.text
                assert r.headers["Location"] == f"{b.url}/api/whep/hall"
                r = await a.client.post(r.headers["Location"], content=offer,
                                        headers={"Content-Type": "application/sdp"})
                assert r.status_code == 201, r.text
                await second.accept_answer(r.text)
                await second.wait_connected()
                assert abs(dominant_frequency(await second.record(0.5)) - 440.0) < 3
                assert b.service.listener_counts()["sinks"]["hall"] == 1
            r = await a.client.delete("/api/publications/to-b")
            assert r.status_code == 409 and "config file" in r.text, r.text
            r = await a.client.post("/api/publications", json={
                "id": "to-b", "sink_id": "main", "url": f"{b.url}/api/whip/from_a"})
            assert r.status_code == 409, r.text
            assert "publications" not in (await a.client.get("/api/backup")).json()["sections"]
            assert (await wait_state(a, "to-b", "live"))["attempts"] == 1
            await a.wait_idle()
        await b.wait_idle()


# ---- a third-party WHIP server -------------------------------------------------------------

def needs_whip_out_check(test):
    """Skipped where tests/support/whip_out_check.py cannot run."""
    for mark in (
            pytest.mark.skipif(not can_unshare(),
                               reason="needs network namespaces (unshare -n as root)"),
            pytest.mark.skipif(not janus_support.available(),
                               reason="needs Janus (packages/test.txt)"),
            pytest.mark.skipif(not whip_server.available(),
                               reason="needs simple-whip-server (make test unpacks it: "
                                      "packages/test-unpacked.txt)")):
        test = mark(test)
    return test


async def whip_out_check(scenario: str) -> dict:
    """tests/support/whip_out_check.py's ``scenario``, in a network namespace
    of its own: what it printed. A failure shows what it found so far and
    the ends of simple-whip-server's and Janus's logs, not the traceback
    alone."""
    return await run_scenario(Path(__file__).parents[1] / "support" / "whip_out_check.py",
                              scenario, tail=16000)


@needs_whip_out_check
async def test_the_box_publishes_to_simple_whip_server_and_janus_videoroom_subscribers_hear_it():
    """Debian's simple-whip-server, Janus's VideoRoom behind it, in a network
    namespace of the test's own (tests/support/whip_out_check.py): the box's
    publication goes live, VideoRoom lists the publisher, a subscriber
    through VideoRoom's API is offered stereo Opus and hears 440 Hz in both
    ears; a path that breaks without a word is noticed, the ICE restart
    tried on it (the server takes it) brings nothing back while it stays
    broken, and it is published again (DELETE, a fresh POST) once it heals;
    stopping the publication DELETEs it out of the room."""
    heard = await whip_out_check("break")
    assert heard["resource"].endswith("/whip/resource/box")
    assert [p["display"] for p in heard["participants"]] == ["WHIP Publisher 1234"]
    assert all(p["publisher"] for p in heard["participants"])
    assert any("stereo=1" in fmtp for fmtp in heard["subscriber_offer_fmtp"])
    assert abs(heard["left_hz"] - 440.0) < 3 and abs(heard["right_hz"] - 440.0) < 3
    assert "nothing heard from the server" in heard["broken_error"]
    assert "not heard within 3 s of the ICE restart" in heard["broken_error"]
    assert heard["attempts_after_heal"] >= 2
    assert heard["participants_after"] == []


@needs_whip_out_check
@pytest.mark.skipif(not shutil.which("turnserver"), reason="needs coturn (packages/test.txt)")
async def test_a_candidate_gathered_after_the_offer_is_patched_to_simple_whip_server():
    """A real late candidate (tests/support/whip_out_check.py, ``trickle``):
    the box's STUN server (coturn, behind a NAT in a namespace of its own)
    answers only once the offer is out, with the host candidate alone in
    it; the server-reflexive candidate is PATCHed to simple-whip-server
    (trickle-ice-sdpfrag, its 204 counted), the publication stays live and
    a VideoRoom subscriber hears 440 Hz. The server's Link names the same
    STUN server, read from its 201."""
    heard = await whip_out_check("trickle")
    assert heard["attempts"] == 1 and heard["state"] == "live"
    assert heard["trickled"] >= 1 and heard["trickle_error"] is None
    assert heard["ice_servers"] == ["stun:10.98.0.2:3478"]
    assert heard["posted"] and all(" typ host" in line for line in heard["posted"])
    assert any(" typ srflx raddr 10.98.0.1 " in line and " 10.98.0.3 " in line
               for line in heard["patched"]), heard["patched"]
    assert abs(heard["left_hz"] - 440.0) < 3 and abs(heard["right_hz"] - 440.0) < 3


# ---- what a WHIP server's 201 says: ICE servers, trickle -----------------------------------

def answer_to(offer: str) -> str:
    """An answer webrtcbin takes (ICE credentials, a fingerprint, our Opus)
    but no candidate: the attempt never connects."""
    mid = next(line[6:] for line in offer.splitlines() if line.startswith("a=mid:"))
    return "\r\n".join([
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", f"a=group:BUNDLE {mid}",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", f"a=mid:{mid}",
        "a=ice-ufrag:fake", "a=ice-pwd:fakefakefakefakefakefake",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:passive", "a=rtcp-mux",
        "a=recvonly", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 stereo=1", ""])


class RecordingWhipServer:
    """A WHIP server on loopback that records every request and answers a
    POST with 201, ``headers`` and an answer, a PATCH with ``patch_status``."""

    def __init__(self, headers: list[str], patch_status: int = 204):
        self.headers = headers
        self.patch_status = patch_status
        self.requests: list[tuple[str, dict[str, str], str]] = []
        self.changed = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/whip"
        task_status.started()
        await trio.serve_listeners(self.serve, listeners)

    async def serve(self, stream):
        async with stream:
            if (request := await whip_server.read_http_request(stream)) is None:
                return
            method, _, headers, body = request
            self.requests.append((method, headers, body.decode()))
            self.changed.set()
            self.changed = trio.Event()
            if method == "POST":
                answer = answer_to(body.decode()).encode()
                extra = "".join(f"{h}\r\n" for h in self.headers)
                await stream.send_all(
                    f"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\n"
                    f"Location: /whip/resource/1\r\n{extra}"
                    f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n".encode()
                    + answer)
            else:
                status = self.patch_status if method == "PATCH" else 200
                await stream.send_all(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n"
                                      f"Connection: close\r\n\r\n".encode())

    async def wait_for(self, predicate, timeout: float = 20):
        with trio.fail_after(timeout):
            while not (found := [r for r in self.requests if predicate(r)]):
                await self.changed.wait()
        return found


class StunServer:
    """A UDP socket on loopback that counts the STUN Binding requests it
    gets (and answers none): whether webrtcbin was given it."""

    def __init__(self):
        self.requests = 0
        self.asked = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        task_status.started()
        with sock:
            while True:
                data, _ = await sock.recvfrom(2048)
                try:
                    stun.parse_message(data)
                except ValueError:
                    continue
                self.requests += 1
                self.asked.set()


def quick_attempts(tmp_path, monkeypatch):
    """A box whose publication attempts end fast (1 s to connect, 0.2 s
    between attempts) and whose offers go out before webrtcbin has
    gathered (gather timeout 0.3 s)."""
    monkeypatch.setattr(outbound, "BACKOFF_S", (0.2,))
    monkeypatch.setattr(publications, "CONNECT_TIMEOUT_S", 1.0)
    config = make_config(tmp_path)
    return config.replace(engine=dataclasses.replace(config.engine, gather_timeout_ms=300))


async def test_a_201s_stun_server_serves_the_next_attempt(tmp_path, monkeypatch):
    """The 201 names a STUN server (Link rel="ice-server") beside a Link of
    another relation: the next attempt's webrtcbin asks that server."""
    stun_server = StunServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(stun_server.run)
        whip = RecordingWhipServer([
            f'Link: <stun:127.0.0.1:{stun_server.port}>; rel="ice-server"',
            'Link: <https://example.org/x>; rel="preload"',
            'ETag: "v1"', "Accept-Patch: application/trickle-ice-sdpfrag"])
        await nursery.start(whip.run)
        async with open_server(quick_attempts(tmp_path, monkeypatch)) as a:
            r = await a.client.post("/api/publications", json={
                "id": "p", "sink_id": "main", "url": whip.url})
            assert r.status_code == 201
            # the first attempt knew none: asked while the second gathers
            with trio.fail_after(10):
                await stun_server.asked.wait()
            status = (await a.client.get("/api/publications")).json()[0]
            assert status["ice_servers"] == [f"stun:127.0.0.1:{stun_server.port}"]
            assert status["ice_servers_error"] is None
            assert (await a.client.delete("/api/publications/p")).status_code == 204
            assert (await a.wait_idle()) == IDLE
        nursery.cancel_scope.cancel()


HOSTILE_LINKS = [
    ('Link: <javascript:alert(1)>; rel="ice-server"', "no stun:, turn: or turns:"),
    ('Link: <stun:a%00b>; rel="ice-server"', "no stun:, turn: or turns:"),
    ('Link: <stun:host:99999>; rel="ice-server"', "port is out of range"),
    ('Link: <turn:host?transport=udp>; rel="ice-server"', "username is missing"),
    ('Link: <turn:host>; rel="ice-server"; username="u"; credential="c\x7f"',
     "credential is missing or not printable"),
    ('Link: <turn:host>; rel="ice-server"; username="u"; credential="c"; '
     'credential-type="oauth"', "not a password"),
    ('Link: <turn:host>; rel="ice-server"; username="' + "u" * 300 + '"; credential="c"',
     "username is missing or not printable"),
    ("Link: " + ", ".join(['<stun:h>; rel="ice-server"'] * 5), "more than 4"),
    ("Link: " + '<stun:h>; rel="ice-server", ' * 100, "over 2048"),
    ('Link: <stun:h>; rel="ice-server"; rel="x"', "names rel twice"),
    ("Link: stun:h; rel=ice-server", "malformed"),
    ('Link: <stun:' + "a" * 300 + '>; rel="ice-server"', "host is not one"),
    ('Link: <stun:-bad-.>; rel="ice-server"', "host is not one"),
]


@pytest.mark.parametrize("link, error", HOSTILE_LINKS)
async def test_hostile_ice_server_links_are_refused_with_the_reason(link, error):
    """Every one refuses the response's ICE servers, all of them (a good one
    beside it too), and says why."""
    assert link.startswith("Link: ")
    with pytest.raises(publications.LinkRefused) as refused:
        publications.ice_servers_from_links(['<stun:127.0.0.1:3478>; rel="ice-server"',
                                             link[len("Link: "):]])
    assert error in str(refused.value)


async def test_a_refused_link_is_shown_in_the_status_and_the_attempts_go_on(tmp_path,
                                                                            monkeypatch):
    """A hostile Link in a real 201 (every kind is refused alike, see above):
    the status says why, no ICE server is kept, the attempts go on without
    them and the box's own listeners keep their tone."""
    link, error = HOSTILE_LINKS[0]
    async with trio.open_nursery() as nursery:
        whip = RecordingWhipServer(['Link: <stun:127.0.0.1:3478>; rel="ice-server"', link])
        await nursery.start(whip.run)
        async with open_server(quick_attempts(tmp_path, monkeypatch)) as a:
            r = await a.client.post("/api/publications", json={
                "id": "p", "sink_id": "main", "url": whip.url})
            assert r.status_code == 201
            with trio.fail_after(10):
                while not (status := (await a.client.get("/api/publications")).json()[0]
                           )["ice_servers_error"]:
                    await trio.sleep(0.05)
            assert status["ice_servers_error"].startswith(
                "the server's ICE servers were refused: "), status
            assert error in status["ice_servers_error"], status
            assert status["ice_servers"] == []
            await whip.wait_for(lambda r: r[0] == "DELETE")   # the attempt ran its course
            assert abs(await heard_hz(a) - 440.0) < 3
            assert (await a.client.delete("/api/publications/p")).status_code == 204
        nursery.cancel_scope.cancel()


async def test_a_server_is_taken_for_gone_only_once_heard_anew_and_then_silent(monkeypatch):
    """Publications.Heard, fed the age of the server's last datagram once a
    second: a server heard only at DTLS (never anew) is not a broken path,
    however long; one heard anew while live, then silent past the bound, is."""
    clock = [1000.0]
    monkeypatch.setattr(publications.time, "monotonic", lambda: clock[0])
    never_again = publications.Heard()
    for second in range(30):
        clock[0] += 1
        assert not never_again.silent(second + 0.5)
    heard = publications.Heard()
    for age in (0.4, 0.3, 0.6):           # fresh datagrams while live
        clock[0] += 1
        assert not heard.silent(age)
    for second in range(1, int(publications.PEER_SILENT_S)):
        clock[0] += 1
        assert not heard.silent(0.6 + second)   # silent, within the bound
    clock[0] += 1
    assert heard.silent(0.6 + publications.PEER_SILENT_S)


@needs_whip_out_check
async def test_an_ice_restart_brings_a_broken_path_back_on_the_same_resource():
    """tests/support/whip_out_check.py, ``restart``: the path breaks, the box
    notices the silence and restarts ICE (RFC 9725 section 4.4: a PATCH
    with new credentials, ``If-Match: "*"``: simple-whip-server, strict
    about ETags, takes a restart only with that); it restarts Janus's ICE
    and answers 200 with Janus's new credentials; the path
    heals, and the same resource (one POST, one attempt) carries the tone
    that a new VideoRoom subscriber hears."""
    heard = await whip_out_check("restart")
    assert heard["restart_status"]["ice_restarts"] == 1, heard["restart_status"]
    assert heard["restart_status"]["ice_restart_error"] is None
    assert heard["restarts_logged"] == 1 and heard["posts"] == 1
    assert heard["after"] == {"attempts": 1, "ice_restarts": 1, "resource": heard["resource"]}
    assert abs(heard["left_hz"] - 440.0) < 3 and abs(heard["right_hz"] - 440.0) < 3


@pytest.mark.slow   # 11 s; its ending, DELETE and a fresh POST, is also the break scenario's
@needs_whip_out_check
async def test_a_server_that_refuses_the_ice_restart_gets_a_fresh_post():
    """tests/support/whip_out_check.py, ``refused``: simple-whip-server
    behind a proxy that answers ICE restarts 405 (RFC 9725 section 4.4, a
    server without them); the path breaks, the restart is refused and says
    so, the box DELETEs and POSTs again once the path heals, and a VideoRoom
    subscriber hears the tone."""
    heard = await whip_out_check("refused")
    assert heard["refused"] == 1
    assert heard["broken"]["ice_restarts"] == 0
    assert heard["broken"]["ice_restart_error"] == "the server does not restart ICE (405)"
    assert heard["broken"]["error"].endswith("the path broke; the server does not restart "
                                             "ICE (405)")
    assert heard["attempts_after_heal"] >= 2 and heard["posts"] >= 2
    assert abs(heard["left_hz"] - 440.0) < 3 and abs(heard["right_hz"] - 440.0) < 3


async def test_the_engine_restarts_a_live_publications_ice_and_checks_the_answer(tmp_path):
    """The engine's ICE restart on a live publication (box A's engine into
    box B's booth, on loopback): new local credentials, unlike the offer's,
    both of letters and digits alone (ae_ice_text: simple-whip-server makes
    a RegExp of the offer's, and "++" in them made its restart answer 500);
    a server answer with credentials that are none (RFC 8839) refused with
    the reason; one with good ones taken (its candidates: the answer's
    again). Closing it afterwards leaves nothing behind."""
    from appliance.engine import EngineError
    from appliance.events import ListenerStateChanged, OfferReady

    async with open_server(make_config(tmp_path / "b")) as b:
        token = await add_booth(b)
        async with open_server(make_config(tmp_path / "a")) as a:
            engine = a.service.engine
            publication = engine.start_publication("main")
            try:
                with pytest.raises(EngineError, match="with its answer"):
                    publication.ice_restart()
                offer = None
                with trio.fail_after(10):
                    async for event in publication.events:
                        if isinstance(event, OfferReady):
                            offer = event.sdp
                            break
                assert offer
                r = await a.client.post(f"{b.url}/api/whip/booth", content=offer, headers={
                    "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})
                assert r.status_code == 201, r.text
                publication.set_answer(r.text)
                with trio.fail_after(10):
                    async for event in publication.events:
                        if isinstance(event, ListenerStateChanged) and event.state.is_live:
                            break
                offered = re.findall(r"^a=ice-(ufrag|pwd):(.*)\r$", offer, re.M)
                assert sorted(kind for kind, _ in offered) == ["pwd", "ufrag"], offer
                ufrag, pwd = publication.ice_restart()
                assert f"a=ice-ufrag:{ufrag}\r\n" not in offer
                for credential, least in [*((value, 4 if kind == "ufrag" else 22)
                                            for kind, value in offered),
                                          (ufrag, 4), (pwd, 22)]:
                    assert re.fullmatch(r"[A-Za-z0-9]+", credential), credential
                    assert len(credential) >= least, credential
                with pytest.raises(EngineError, match="credentials are not ones"):
                    publication.restart_answer("a b", "x" * 22)
                with pytest.raises(EngineError, match="credentials are not ones"):
                    publication.restart_answer("abcd", "short")
                publication.restart_answer("abcd", "p" * 24)
                publication.restart_answer("abcd", "p" * 24,
                                           ["candidate:1 1 UDP 2130706431 127.0.0.1 9 typ host"])
            finally:
                await publication.aclose()
            assert (await a.wait_idle()) == IDLE
