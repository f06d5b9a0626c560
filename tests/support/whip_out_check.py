"""The box publishes to a real WHIP server: Debian's simple-whip-server
with Janus's VideoRoom behind it, in a network namespace of the test's own
(tests/web/test_publications.py starts this under ``unshare -n``; Janus
gathers no candidates on loopback, see janus_check.py). Prints JSON.

A WHIP endpoint into VideoRoom room VIDEOROOM is created; the box publishes
its tone channel to it (``POST /api/publications``); Janus's VideoRoom
lists the publisher (``listparticipants``); an aiortc subscriber, through
Janus's VideoRoom API, hears it. Stopping the publication DELETEs the
resource: the publisher leaves the room.

    unshare -n python tests/support/whip_out_check.py"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import trio  # noqa: E402

from support.janus import VIDEOROOM, Janus, JanusClient  # noqa: E402
from support.janus_check import ADDRESS, namespace  # noqa: E402
from support.webrtc import dominant_frequency, open_aiortc_listener  # noqa: E402
from support.whip_server import WhipServer  # noqa: E402
from tests.web.conftest import make_config, open_server  # noqa: E402


async def participants(janus: Janus) -> list[dict]:
    client = JanusClient(janus.url)
    try:
        await client.attach("janus.plugin.videoroom")
        reply = await client.message({"request": "listparticipants", "room": VIDEOROOM})
        return reply.get("participants", [])
    finally:
        await client.aclose()


async def wait_publication(box, state: str, timeout: float = 20) -> dict:
    with trio.fail_after(timeout):
        while True:
            status = (await box.client.get("/api/publications")).json()[0]
            if status["state"] == state:
                return status
            await trio.sleep(0.05)


async def main(tmp: Path) -> dict:
    janus = Janus(tmp / "janus", ice="d0", videoroom=True)
    await janus.start()
    whip = WhipServer(tmp, janus.ws_url)
    out: dict = {}
    try:
        await whip.start()
        url = await whip.create_endpoint("box", VIDEOROOM, token="t" * 32)
        config = make_config(tmp / "box")
        config = config.replace(engine=dataclasses.replace(config.engine,
                                                           ice_addresses=(ADDRESS,)))
        async with open_server(config) as box:
            r = await box.client.post("/api/publications", json={
                "id": "to-janus", "sink_id": "main", "url": url, "token": "t" * 32})
            assert r.status_code == 201, r.text
            status = await wait_publication(box, "live")
            out["resource"] = status["resource"]
            with trio.fail_after(10):
                while not (found := await participants(janus)):
                    await trio.sleep(0.1)
            out["participants"] = found
            subscriber = JanusClient(janus.url)
            await subscriber.attach("janus.plugin.videoroom")
            async with open_aiortc_listener() as peer:
                await subscriber.message({"request": "join", "ptype": "subscriber",
                                          "room": VIDEOROOM, "feed": found[0]["id"]})
                offer = (await subscriber.next_event("jsep"))["jsep"]["sdp"]
                out["subscriber_offer_fmtp"] = [line for line in offer.splitlines()
                                                if line.startswith("a=fmtp:")]
                answer = await peer.answer_offer(offer)
                await subscriber.message({"request": "start", "room": VIDEOROOM},
                                         {"type": "answer", "sdp": answer})
                await peer.wait_first_packet(timeout=10)
                left, right = await peer.record_stereo(1.0)
                out["left_hz"], out["right_hz"] = dominant_frequency(left), \
                    dominant_frequency(right)
            await subscriber.aclose()
            assert (await box.client.delete("/api/publications/to-janus")).status_code == 204
            with trio.fail_after(10):
                while await participants(janus):
                    await trio.sleep(0.1)
            out["participants_after"] = []
    except BaseException:
        print(json.dumps(out), whip.log(), janus.log(), file=sys.stderr)
        raise
    finally:
        await whip.stop()
        await janus.stop()
    return out


if __name__ == "__main__":
    namespace()
    with tempfile.TemporaryDirectory() as tmp:
        result = trio.run(main, Path(tmp))
    print(json.dumps(result))
