"""WHEP against a real server and the real engine, with real aiortc peers."""
from __future__ import annotations

import re

import pytest
import trio

from appliance.config import IceServer
from tests.support.webrtc import (
    dominant_frequency, open_aiortc_listener, rms_dbfs, synthetic_offer,
)
from tests.web.conftest import IDLE, SDP, make_config, open_server

pytestmark = pytest.mark.trio


async def _listen(server, peer, path="/api/whep/main"):
    offer = await peer.create_offer()
    response = await server.post_offer(offer, path)
    assert response.status_code == 201, response.text
    await peer.accept_answer(response.text)
    await peer.wait_connected(timeout=10)
    return response


async def test_a_listener_hears_the_tone_and_delete_leaves_nothing(server):
    async with open_aiortc_listener() as peer:
        response = await _listen(server, peer)
        assert response.headers["Content-Type"] == "application/sdp"
        location = response.headers["Location"]
        assert re.fullmatch(r"/api/whep/main/[A-Za-z0-9_-]{32}", location)
        assert re.fullmatch(r'"[0-9a-f]{24}"', response.headers["ETag"])  # strong
        assert "application/trickle-ice-sdpfrag" in response.headers["Accept-Patch"]
        assert "Link" not in response.headers  # no ICE servers configured
        answer = response.text
        assert "a=candidate:" in answer and "127.0.0.1" in answer
        assert "a=sendonly" in answer
        samples = await peer.record(seconds=1.0)
        assert abs(dominant_frequency(samples) - 440.0) < 2.0
        assert -18.0 < rms_dbfs(samples) < -12.0  # -12 dBFS peak tone: -15 dBFS RMS
        status = (await server.client.get("/api/status")).json()
        assert status["listeners"]["sinks"] == {"main": 1}
        assert status["listeners"]["total"] == 1
        assert server.service.census()["engine_listeners"] == 1

        deleted = await server.client.delete(location)
        assert deleted.status_code == 200
        assert server.service.census() == IDLE
        status = (await server.client.get("/api/status")).json()
        assert status["listeners"]["total"] == 0
        # DELETE is idempotent for a session that ended moments ago; nothing else is
        assert (await server.client.delete(location)).status_code == 200
        assert (await server.client.post(location)).status_code == 404
        assert (await server.client.delete(location.replace("/main/", "/other/"))).status_code \
            == 404


async def test_delete_after_the_peer_closed_first_is_200(server):
    """The peer's DTLS close notice often ends the session before its
    DELETE arrives (10 of 16 browser runs): that DELETE is answered 200."""
    async with open_aiortc_listener() as peer:
        location = (await _listen(server, peer)).headers["Location"]
        session = next(iter(server.service.sessions))
    with trio.fail_after(10):
        await session.done.wait()    # the peer closed: DTLS close_notify ended it
    assert session.end_reason != "deleted"
    assert (await server.client.delete(location)).status_code == 200
    assert server.service.census() == IDLE


async def test_two_listeners_and_a_source_listener_hear_at_once(server):
    async with open_aiortc_listener() as a, open_aiortc_listener() as b, \
            open_aiortc_listener() as c:
        ra = await _listen(server, a)
        rb = await _listen(server, b)
        rc = await _listen(server, c, "/api/whep/source/tone")
        assert rc.headers["Location"].startswith("/api/whep/_listen-")
        census = server.service.census()
        assert census["temporary_sinks"] == 1 and census["temporary_routes"] == 1
        assert census["engine_listeners"] == 3
        for peer in (a, b, c):
            assert abs(dominant_frequency(await peer.record(0.5)) - 440.0) < 2.0
        status = (await server.client.get("/api/status")).json()
        assert status["listeners"] == {"total": 3, "sinks": {"main": 2},
                                       "sources": {"tone": 1}, "routes": {}}
        for r in (ra, rb, rc):
            assert (await server.client.delete(r.headers["Location"])).status_code == 200
        assert server.service.census() == IDLE


async def test_listening_to_a_route_follows_its_gain(server):
    async with open_aiortc_listener() as peer:
        r = await server.client.patch("/api/routes/tone-main", json={"gain_db": -20.0})
        assert r.status_code == 200, r.text
        response = await _listen(server, peer, "/api/whep/route/tone-main")
        quiet = rms_dbfs(await peer.record(0.5))
        assert -38.0 < quiet < -32.0  # -15 dBFS RMS tone, 20 dB down
        r = await server.client.patch("/api/routes/tone-main", json={"gain_db": 0.0})
        assert r.status_code == 200
        await peer.record(0.2)  # let the change reach the peer
        loud = rms_dbfs(await peer.record(0.5))
        assert -18.0 < loud < -12.0
        assert (await server.client.delete(response.headers["Location"])).status_code == 200
    assert server.service.census() == IDLE


async def test_trickled_candidates_are_accepted_by_sdpfrag_and_json(server):
    async with open_aiortc_listener() as peer:
        offer = await peer.create_offer(trickle=True)
        assert "a=candidate" not in offer
        response = await server.post_offer(offer)
        assert response.status_code == 201, response.text
        location, etag = response.headers["Location"], response.headers["ETag"]
        (mid, first), *rest = peer.candidates
        fragment = (f"a=ice-ufrag:{_ufrag(offer)}\r\na=ice-pwd:{_pwd(offer)}\r\n"
                    f"m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{mid}\r\na={first}\r\n")
        r = await server.client.patch(location, content=fragment, headers={
            "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag})
        assert r.status_code == 204, r.text
        for m, cand in rest:
            r = await server.client.patch(location, json={"candidate": cand, "sdpMid": m})
            assert r.status_code == 204, r.text
        r = await server.client.patch(location, json={"candidate": "", "sdpMid": mid})
        assert r.status_code == 204, r.text
        await peer.accept_answer(response.text)
        await peer.wait_connected(timeout=10)
        assert abs(dominant_frequency(await peer.record(0.5)) - 440.0) < 2.0
        r = await server.client.get(location + "/candidates")
        assert r.status_code == 200 and r.json() == []  # all were in the answer
        assert (await server.client.post(location)).status_code == 204  # heartbeat
        assert (await server.client.delete(location)).status_code == 200
    assert server.service.census() == IDLE


def _ufrag(sdp: str) -> str:
    return re.search(r"a=ice-ufrag:(\S+)", sdp).group(1)


def _pwd(sdp: str) -> str:
    return re.search(r"a=ice-pwd:(\S+)", sdp).group(1)


async def test_options_and_link_headers(tmp_path):
    config = make_config(tmp_path, ice_servers=(
        IceServer("stun:stun.example.net:3478"),
        IceServer("turn:turn.example.net", username="u", credential="p")))
    async with open_server(config) as server:
        r = await server.client.options("/api/whep/main")
        assert r.status_code == 204
        assert r.headers["Accept-Post"] == "application/sdp"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        links = r.headers.get_list("Link")
        assert links[0] == '<stun:stun.example.net:3478>; rel="ice-server"'
        assert 'username="u"' in links[1] and 'credential="p"' in links[1]
        response = await server.post_offer(synthetic_offer())
        assert response.status_code == 201
        assert response.headers.get_list("Link") == links
        assert "Location" in response.headers["Access-Control-Expose-Headers"]
        r = await server.client.options(response.headers["Location"])
        assert r.status_code == 204 and "PATCH" in r.headers["Allow"]
        assert "application/trickle-ice-sdpfrag" in r.headers["Accept-Patch"]
        r = await server.client.options(response.headers["Location"] + "/candidates")
        assert r.status_code == 200  # Quart's automatic OPTIONS made a preflight
        assert "GET" in r.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        r = await server.client.options("/api/routes/tone-main")
        assert "Access-Control-Allow-Origin" not in r.headers  # admin: never cross-origin
        assert (await server.client.delete(response.headers["Location"])).status_code == 200


async def test_error_statuses(server):
    client = server.client
    offer = synthetic_offer()
    # unknown sink / source / route
    for path in ("/api/whep/nope", "/api/whep/source/nope", "/api/whep/route/nope"):
        r = await server.post_offer(offer, path)
        assert r.status_code == 404, (path, r.text)
    # wrong content type
    r = await client.post("/api/whep/main", content=offer,
                          headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await client.post("/api/whep/main", json={"sdp": offer})
    assert r.status_code == 415
    # malformed SDP, no Opus
    for bad in ("hello", "v=0\r\nnot sdp at all\r\n", synthetic_offer(opus=False), ""):
        r = await server.post_offer(bad)
        assert r.status_code == 400, (bad[:20], r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("text/plain")
        assert r.text.strip()
    # a body over the limit, announced and streamed (chunked, no length)
    big = offer + "a=x-pad:" + "x" * (70 * 1024) + "\r\n"
    r = await server.post_offer(big)
    assert r.status_code == 413

    async def chunks():
        for _ in range(100):
            yield b"a" * 4096
    r = await client.post("/api/whep/main", content=chunks(), headers=SDP)
    assert r.status_code == 413
    # sessions that do not exist
    r = await server.post_offer(offer)
    assert r.status_code == 201
    location, etag = r.headers["Location"], r.headers["ETag"]
    sid = location.rsplit("/", 1)[1]
    for url in ("/api/whep/main/nosuchsession", f"/api/whep/other/{sid}"):
        assert (await client.delete(url)).status_code == 404
        assert (await client.post(url)).status_code == 404
        assert (await client.get(url + "/candidates")).status_code == 404
        r = await client.patch(url, json={"candidate": ""})
        assert r.status_code == 404
    # PATCH: content type, restart preconditions, bad candidates
    r = await client.patch(location, content="x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    restart = "a=ice-ufrag:newufrag\r\na=ice-pwd:newpasswordnewpassword12\r\n"
    frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
    assert (await client.patch(location, content=restart, headers=frag)).status_code == 428
    r = await client.patch(location, content=restart, headers={**frag, "If-Match": '"nope"'})
    assert r.status_code == 412
    r = await client.patch(location, content=restart, headers={**frag, "If-Match": "*"})
    assert r.status_code == 422
    r = await client.patch(location, content=restart, headers={**frag, "If-Match": etag})
    assert r.status_code == 422
    cand = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
    r = await client.patch(location, content=cand, headers={**frag, "If-Match": '"stale"'})
    assert r.status_code == 412
    r = await client.patch(location, content="a=mid:7\r\n" + cand, headers=frag)
    assert r.status_code == 400
    r = await client.patch(location, content="garbage", headers=frag)
    assert r.status_code == 400
    r = await client.patch(location, json={"nocandidate": 1})
    assert r.status_code == 400
    r = await client.patch(location, json={"candidate": "x", "sdpMid": 5})
    assert r.status_code == 400
    r = await client.patch(location, content=cand, headers=frag)
    assert r.status_code == 204
    assert (await client.delete(location)).status_code == 200
    assert server.service.census() == IDLE


async def test_the_pin_is_required_on_every_method_when_set(tmp_path):
    async with open_server(make_config(tmp_path, listen_pin="s3cret"), headers={}) as server:
        client, offer = server.client, synthetic_offer()
        r = await server.post_offer(offer)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        r = await server.post_offer(offer, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert (await client.options("/api/whep/main")).status_code == 204  # preflight
        ok = {"Authorization": "Bearer s3cret"}
        r = await server.post_offer(offer, headers=ok)
        assert r.status_code == 201
        location = r.headers["Location"]
        for method in ("DELETE", "POST", "PATCH"):
            r = await client.request(method, location, json={"candidate": ""})
            assert r.status_code == 401, method
        assert (await client.get(location + "/candidates")).status_code == 401
        assert (await client.delete(location, headers=ok)).status_code == 200
        assert server.service.census() == IDLE
        for path in ("/api/status", "/api/sources", "/api/sinks", "/api/routes"):
            assert (await client.get(path)).status_code == 401, path
            # the PIN is no admin credential (and guessing with it gets slowed down: 429)
            assert (await client.get(path, headers=ok)).status_code in (401, 429), path
        assert (await client.delete("/api/routes/tone-main", headers=ok)).status_code in (401, 429)


async def test_posts_are_rate_limited_per_client(tmp_path):
    async with open_server(make_config(tmp_path, post_rate_per_s=0.5, post_burst=3)) as server:
        codes = [(await server.post_offer(synthetic_offer())).status_code for _ in range(4)]
        assert codes == [201, 201, 201, 429]
        r = await server.post_offer(synthetic_offer())
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        # other endpoints are not limited
        assert (await server.client.get("/api/status")).status_code == 200
