"""The box publishes to a real WHIP server: Debian's simple-whip-server
with Janus's VideoRoom behind it, in a network namespace of the test's own
(tests/web/test_publications.py starts this under ``unshare -n``; Janus
gathers no candidates on loopback, see janus_check.py). Prints JSON.

A WHIP endpoint into VideoRoom room VIDEOROOM is created; the box publishes
its tone channel to it (``POST /api/publications``); Janus's VideoRoom
lists the publisher (``listparticipants``); an aiortc subscriber, through
Janus's VideoRoom API, hears it. Then the path breaks without a word (a
firewall rule drops the box's UDP): the box notices the server's silence and
publishes again once it heals. Stopping the publication DELETEs the
resource: the publisher leaves the room.

    unshare -n python tests/support/whip_out_check.py"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import trio  # noqa: E402

from support.janus import VIDEOROOM, Janus, JanusClient  # noqa: E402
from support.janus_check import ADDRESS, TOOL_ENV, run_in_namespace  # noqa: E402
from support.webrtc import dominant_frequency, open_aiortc_listener  # noqa: E402
from support.whip_server import WhipServer  # noqa: E402
from appliance import publications  # noqa: E402
from tests.web.conftest import make_config, open_server  # noqa: E402


# the box's own UDP ports, so that a rule can break its path alone (Janus
# shares the namespace's address)
BOX_PORTS = (41000, 41099)
BREAK = ("table inet broken { chain out { type filter hook output priority 0; "
         f"udp sport {BOX_PORTS[0]}-{BOX_PORTS[1]} drop; "
         f"udp dport {BOX_PORTS[0]}-{BOX_PORTS[1]} drop; }}; }}")
HEAL = "delete table inet broken"
SILENT_S = 3.0   # the box's patience with a silent server, shortened for the test
publications.PEER_SILENT_S = SILENT_S


def nft(rules: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True, env=TOOL_ENV)


async def heard_anew(box) -> None:
    """Until the box has heard the server anew while live (what arms its
    patience with a silent server): four of its readings (one a second; a
    new one shows as a new packets_sent) each found the server heard within
    the last 2 s, so it spoke again after the first of them."""
    readings: list[int] = []
    with trio.fail_after(15):
        while len(readings) < 4:
            status = (await box.client.get("/api/publications")).json()[0]
            if status["heard_s_ago"] is None or status["heard_s_ago"] >= 2.0:
                readings.clear()
            elif not readings or status["packets_sent"] != readings[-1]:
                readings.append(status["packets_sent"])
            await trio.sleep(0.1)


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
        config = config.replace(engine=dataclasses.replace(
            config.engine, ice_addresses=(ADDRESS,), min_port=BOX_PORTS[0],
            max_port=BOX_PORTS[1]))
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
            # the path breaks without a word (a firewall drops the box's UDP):
            # the box notices the silence, and publishes again once it heals
            await heard_anew(box)
            nft(BREAK)
            broken = await wait_publication(box, "retrying", timeout=3 * SILENT_S)
            out["broken_error"] = broken["error"]
            nft(HEAL)
            healed = await wait_publication(box, "live", timeout=30)
            out["attempts_after_heal"] = healed["attempts"]
            with trio.fail_after(10):
                while not await participants(janus):
                    await trio.sleep(0.1)
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
    run_in_namespace(main)
