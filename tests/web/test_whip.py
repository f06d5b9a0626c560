"""WHIP into the box: a publisher's Opus feeds a whip source, heard by real
listeners at the pitch it sent; and every way a stranger or a broken
publisher may try it refused or cleaned up."""
from __future__ import annotations

import signal
import subprocess
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.support.webrtc import dominant_frequency, open_aiortc_listener, open_aiortc_publisher
from tests.web.conftest import IDLE, SDP, heard_hz, make_config, open_server

pytestmark = pytest.mark.trio

OFFERS = Path(__file__).parent.parent / "support" / "offers"

BOOTH = {"id": "booth", "name": "Booth FR", "kind": "whip", "public": True}


async def add_booth(server, **extra) -> str:
    """A whip source "booth" and its channel "fr"; returns its publish token."""
    r = await server.client.post("/api/sources", json={**BOOTH, **extra})
    assert r.status_code == 201, r.text
    token = r.json()["publish_token"]
    assert len(token) >= 24
    for path, body in (("/api/sinks", {"id": "fr", "kind": "opus", "language": "fr"}),
                       ("/api/routes", {"id": "booth-fr", "source_id": "booth",
                                        "sink_id": "fr"})):
        r = await server.client.post(path, json=body)
        assert r.status_code == 201, r.text
    return token


async def publish(server, peer, token: str, source: str = "booth"):
    r = await server.client.post(f"/api/whip/{source}", content=await peer.create_offer(),
                                 headers={**SDP, "Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    assert r.headers["Content-Type"].startswith("application/sdp")
    assert "a=recvonly" in r.text and "stereo=1" in r.text
    await peer.accept_answer(r.text)
    await peer.wait_connected()
    return r


async def receiving(server, source: str = "booth", want: bool = True) -> dict:
    with trio.fail_after(10):
        while True:
            network = (await server.client.get("/api/status")).json()["network_sources"][source]
            if network["receiving"] == want and (not want or network["buffered_ms"] is not None):
                return network
            await trio.sleep(0.05)


async def test_a_published_microphone_is_heard_on_its_channel(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        token = await add_booth(server)
        async with open_aiortc_publisher(523.0) as peer:
            r = await publish(server, peer, token)
            assert r.headers["Location"].startswith("/api/whip/booth/")
            network = await receiving(server)
            assert network["publisher"]["connected"] and network["sender"] == "127.0.0.1"
            assert abs(await heard_hz(server, "/api/whep/fr") - 523.0) < 3
            status = (await server.client.get("/api/sources/booth")).json()["network"]
            assert status["packets"] > 10 and status["rate"] == 48000, repr(status)
            assert (await server.client.delete(r.headers["Location"])).status_code == 200
        await receiving(server, want=False)
        assert (await server.wait_idle()) == IDLE


async def test_each_ear_hears_its_own_side_of_a_stereo_publisher(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        token = await add_booth(server)
        async with open_aiortc_publisher(440.0, right_hz=1000.0) as peer:
            await publish(server, peer, token)
            await receiving(server)
            async with open_aiortc_listener() as listener:
                answer = await server.post_offer(await listener.create_offer(), "/api/whep/fr")
                assert answer.status_code == 201, answer.text
                await listener.accept_answer(answer.text)
                await listener.wait_connected()
                left, right = await listener.record_stereo(0.5)
                assert abs(dominant_frequency(left) - 440.0) < 3
                assert abs(dominant_frequency(right) - 1000.0) < 3
                await server.client.delete(answer.headers["Location"])
        assert (await server.wait_idle())["publishers"] == 0


async def test_an_obs_shaped_offer_with_video_gets_its_audio_answered(tmp_path):
    """OBS Studio (libdatachannel) offers its audio and its video: the video
    is rejected in place and the audio answered recvonly, in stereo."""
    async with open_server(make_config(tmp_path)) as server:
        token = await add_booth(server)
        offer = (OFFERS / "obs-whip.sdp").read_text()
        r = await server.client.post("/api/whip/booth", content=offer,
                                     headers={**SDP, "Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        audio, video = r.text.split("m=audio ")[1].split("m=video ")
        assert "a=recvonly" in audio and "a=rtpmap:111 opus/48000/2" in audio
        assert "stereo=1" in audio and "a=mid:0" in audio
        assert video.startswith("0 ") and "a=mid:1" in video
        assert (await server.client.delete(r.headers["Location"])).status_code == 200
        assert (await server.wait_idle()) == IDLE


async def test_a_new_publisher_replaces_the_one_before(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        token = await add_booth(server)
        async with open_aiortc_publisher(440.0) as first, open_aiortc_publisher(880.0) as second:
            r1 = await publish(server, first, token)
            await receiving(server)
            old = server.service.publishers.by_source["booth"]
            r2 = await publish(server, second, token)
            assert old.end_reason == "replaced" and old.done.is_set()
            assert (await server.client.delete(r1.headers["Location"])).status_code == 404
            assert abs(await heard_hz(server, "/api/whep/fr") - 880.0) < 3
            assert (await server.client.delete(r2.headers["Location"])).status_code == 200
        assert (await server.wait_idle())["publishers"] == 0


async def test_a_publisher_that_vanishes_ends_and_its_source_says_lost(tmp_path):
    config = make_config(tmp_path)
    config = config.replace(engine=config.engine.__class__(
        **{**config.engine.__dict__, "consent_timeout_s": 1.0}))
    async with open_server(config) as server:
        token = await add_booth(server)
        async with open_aiortc_publisher(440.0) as peer:
            await publish(server, peer, token)
            await receiving(server)
            publisher = server.service.publishers.by_source["booth"]
            await peer.vanish()
            with trio.fail_after(10):
                await publisher.done.wait()
            assert publisher.end_reason == "ice failed"
            await receiving(server, want=False)
            with trio.fail_after(5):   # its channel tells listeners, as for an unplugged HAT
                while not any(d["id"] == "booth" and d["state"] == "lost" for d in
                              (await server.client.get("/api/status")).json()["devices"]):
                    await trio.sleep(0.05)
        assert (await server.wait_idle())["publishers"] == 0


async def test_deleting_the_source_ends_its_publisher(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        token = await add_booth(server)
        async with open_aiortc_publisher(440.0) as peer:
            await publish(server, peer, token)
            publisher = server.service.publishers.by_source["booth"]
            assert (await server.client.delete("/api/routes/booth-fr")).status_code == 204
            assert (await server.client.delete("/api/sources/booth")).status_code == 204
            with trio.fail_after(5):
                await publisher.done.wait()
            assert publisher.end_reason == "source deleted or made again"
        assert (await server.wait_idle())["publishers"] == 0


# ---- refused --------------------------------------------------------------------------

async def test_no_token_a_wrong_one_or_another_sources_are_refused(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        token = await add_booth(server)
        r = await server.client.post("/api/sources", json={**BOOTH, "id": "booth2"})
        other = r.json()["publish_token"]
        assert other != token
        async with open_aiortc_publisher(440.0) as peer:
            offer = await peer.create_offer()
            for headers in ({}, {"Authorization": "Bearer " + "x" * 32},
                            {"Authorization": f"Bearer {other}"},
                            {"Authorization": f"Basic {token}"},
                            {"Authorization": f"Bearer {token[:-1]}"}):
                r = await server.client.post("/api/whip/booth", content=offer,
                                             headers={**SDP, **headers})
                assert r.status_code == 401, (headers, r.text)
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="publish"'
            # a source that is not a whip source, or none at all
            for path in ("/api/whip/main", "/api/whip/nothing", "/api/whip/..%2Fetc",
                         "/api/whip/" + "b" * 300):
                r = await server.client.post(path, content=offer,
                                             headers={**SDP, "Authorization": f"Bearer {token}"})
                assert r.status_code in (404, 405), (path, r.text)
        assert server.service.publishers.by_source == {}
        assert (await server.wait_idle())["publishers"] == 0


async def test_offers_that_publish_nothing_are_refused(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        token = await add_booth(server)
        auth = {**SDP, "Authorization": f"Bearer {token}"}
        async with open_aiortc_listener() as listener:   # recvonly: nothing to publish
            r = await server.client.post("/api/whip/booth", content=await listener.create_offer(),
                                         headers=auth)
            assert r.status_code == 400 and "nothing to publish" in r.text, r.text
        for body in ("", "v=0\r\n", "x" * 40000, "\x00\x01"):
            r = await server.client.post("/api/whip/booth", content=body, headers=auth)
            assert r.status_code in (400, 413), (body[:10], r.status_code)
        r = await server.client.post("/api/whip/booth", content="v=0", headers={
            "Content-Type": "text/plain", "Authorization": f"Bearer {token}"})
        assert r.status_code == 415
        assert (await server.wait_idle())["publishers"] == 0


async def test_the_publish_token_is_refused_over_plain_http_from_another_machine(tmp_path):
    from tests.web.test_https import other_address   # a LAN address of this machine
    address = other_address()
    async with open_server(make_config(tmp_path / "state", host=address), headers={}) as server:
        r = await server.client.post("/api/whip/booth", content="v=0\r\n",
                                     headers={**SDP, "Authorization": "Bearer " + "a" * 32})
        assert r.status_code == 403 and r.headers["X-Appliance-Auth"] == "https"
        assert "publish tokens are accepted only over HTTPS" in r.text
        # the page goes to its HTTPS twin: the token and the microphone need it
        r = await server.client.get("/publish/booth")
        https = f"https://{address}:{server.app.appliance_ports['https']}"
        assert r.status_code == 302 and r.headers["Location"] == https + "/publish/booth"


async def test_the_model_refuses_what_a_whip_source_cannot_be(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        for extra, field in (({"channels": 3}, "channels"),
                             ({"publish_token": "short"}, "publish_token"),
                             ({"publish_token": "a b" * 20}, "publish_token"),
                             ({"latency_ms": 1}, "latency_ms")):
            r = await server.client.post("/api/sources", json={**BOOTH, **extra})
            assert r.status_code == 400 and field in r.text, (extra, r.text)
        token = await add_booth(server)
        r = await server.client.patch("/api/sources/booth", json={"publish_token": "n" * 30})
        assert r.status_code == 200 and r.json()["publish_token"] == "n" * 30
        r = await server.client.post("/api/whip/booth", content="v=0\r\n",
                                     headers={**SDP, "Authorization": f"Bearer {token}"})
        assert r.status_code == 401   # the old token is gone


# ---- Debian's simple-whip-client (GStreamer's webrtcbin, libsoup) -----------------------

def whip_client(url: str, token: str, hz: float) -> list[str]:
    """Debian's whip-client publishing a tone (it trickles its candidates by PATCH)."""
    audio = (f"audiotestsrc is-live=true wave=sine freq={hz} volume=0.25 ! audioconvert ! "
             "audioresample ! queue ! opusenc ! rtpopuspay pt=100 ssrc=1 ! queue ! "
             "application/x-rtp,media=audio,encoding-name=OPUS,payload=100")
    return ["whip-client", "-u", url, "-t", token, "-A", audio, "-l", "3", "-o"]


def whip_client_runs() -> None:
    """Skip when Debian's whip-client cannot start here: Debian 12's build
    (libsoup 2) aborts as soon as GStreamer's nice plugin (libsoup 3, through
    gupnp-igd) loads in the same process."""
    probe = subprocess.run(
        ["whip-client", "-u", "http://127.0.0.1:9/", "-A",
         "audiotestsrc num-buffers=1 ! opusenc ! rtpopuspay ! "
         "application/x-rtp,media=audio,encoding-name=OPUS,payload=96"],
        capture_output=True, text=True, timeout=20)
    if "libsoup2 symbols detected" in probe.stderr:
        pytest.skip("Debian's whip-client aborts on this release: it links libsoup 2 and "
                    "GStreamer's nice plugin libsoup 3")


async def test_debians_simple_whip_client_publishes_and_its_goodbye_deletes(tmp_path):
    whip_client_runs()
    async with open_server(make_config(tmp_path)) as server:
        token = await add_booth(server)
        async with trio.open_nursery() as nursery:
            client = await nursery.start(partial(
                trio.run_process, whip_client(f"{server.url}/api/whip/booth", token, 700.0),
                check=False, stdout=subprocess.DEVNULL))
            await receiving(server)
            publisher = server.service.publishers.by_source["booth"]
            assert abs(await heard_hz(server, "/api/whep/fr") - 700.0) < 3
            client.send_signal(signal.SIGINT)   # it DELETEs its resource on the way out
            with trio.fail_after(10):
                await publisher.done.wait()
            assert publisher.end_reason in ("deleted", "ice closed"), publisher.end_reason
        assert (await server.wait_idle())["publishers"] == 0


async def test_forged_media_at_the_shared_port_is_refused_and_the_publisher_plays_on(tmp_path):
    """Datagrams that look like RTP and RTCP, from an address that passed no
    ICE check, and SRTP-shaped junk: counted as refused, nothing reaches the
    source, the real publisher is still heard."""
    import socket as socket_module
    async with open_server(make_config(tmp_path)) as server:
        token = await add_booth(server)
        async with open_aiortc_publisher(523.0) as peer:
            await publish(server, peer, token)
            before = await receiving(server)
            port = (await server.client.get("/api/status")).json()["engine"]["lean"]["port"]
            stranger = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM)
            with stranger:
                for i in range(500):
                    rtp = bytes([0x80, 111, i >> 8 & 0xff, i & 0xff]) + bytes(8) + b"\xff" * 100
                    stranger.sendto(rtp, ("127.0.0.1", port))
                    stranger.sendto(bytes([0x80, 200]) + bytes(50), ("127.0.0.1", port))
            with trio.fail_after(5):
                while (await server.client.get("/api/status")).json()["engine"]["lean"][
                        "rtcp_rejected"] < 1000:
                    await trio.sleep(0.05)
            after = (await server.client.get("/api/status")).json()["network_sources"]["booth"]
            assert after["malformed"] == before["malformed"] and after["restarts"] == 0
            assert abs(await heard_hz(server, "/api/whep/fr") - 523.0) < 3
        assert (await server.wait_idle()) == IDLE
