"""The box publishes to a real WHIP server: Debian's simple-whip-server
with Janus's VideoRoom behind it, in a network namespace of the test's own
(tests/web/test_publications.py starts this under ``unshare -n``; Janus
gathers no candidates on loopback, see janus_check.py). Prints JSON.

Scenario ``break`` (the default): a WHIP endpoint into VideoRoom room
VIDEOROOM is created; the box publishes its tone channel to it (``POST
/api/publications``); Janus's VideoRoom lists the publisher
(``listparticipants``); an aiortc subscriber, through Janus's VideoRoom API,
hears it. Then the path breaks without a word (a firewall rule drops the
box's UDP): the box notices the server's silence and publishes again once it
heals. Stopping the publication DELETEs the resource: the publisher leaves
the room.

Scenario ``trickle``: a real candidate gathered after the offer went out.
The box is given a STUN server (Debian's coturn) in a second namespace, one
veth link away, behind a NAT; the link loses everything until the box's
offer is out. So the box waits for its gather timeout (0.8 s here), offers
its host candidate alone, and the server-reflexive one, gathered when a
STUN retransmission gets through, is PATCHed to simple-whip-server (trickle).
The subscriber hears the tone.

Scenario ``restart``: the path breaks and the box, noticing the silence,
restarts ICE on the same resource (RFC 9725 section 4.4: a PATCH with new
credentials, simple-whip-server's 200 with Janus's); the path heals as it
is taken, and the same resource (no second POST) carries the tone again.

Scenario ``refused``: the same against a server that refuses ICE restarts
(another box's WHIP endpoint, on loopback): the fallback, DELETE and a
fresh POST, publishes again once the path heals.

    unshare -n python tests/support/whip_out_check.py [break|trickle|restart|refused]"""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402
import trio  # noqa: E402

from support.janus import VIDEOROOM, Janus, JanusClient  # noqa: E402
from support.janus_check import ADDRESS, TOOL_ENV, run_in_namespace  # noqa: E402
from support.webrtc import dominant_frequency, open_aiortc_listener  # noqa: E402
from support.whip_server import WhipServer, read_http_request  # noqa: E402
from appliance import publications  # noqa: E402
from tests.web.conftest import make_config, open_server  # noqa: E402


# the box's own UDP ports, so that a rule can break its path alone (Janus
# shares the namespace's address)
BOX_PORTS = (41000, 41099)
# dropped as they arrive, lost as on a real broken path (a drop as they
# leave fails the send: libnice gives up on a check at once)
BREAK = ("table inet broken { chain in { type filter hook input priority 0; "
         f"udp sport {BOX_PORTS[0]}-{BOX_PORTS[1]} drop; "
         f"udp dport {BOX_PORTS[0]}-{BOX_PORTS[1]} drop; }}; }}")
HEAL = "delete table inet broken"
SILENT_S = 3.0   # the box's patience with a silent server, shortened for the test
publications.PEER_SILENT_S = SILENT_S

# The STUN server's namespace: d1, the far end of the box's d0, moves into
# it with 10.98.0.2 (the box's ICE sockets send out d0 alone, measured). The
# box is NATed to 10.98.0.3 on the way (an address no one here has: the
# STUN server's side knows it by a static neighbour entry), so its
# server-reflexive candidate differs from its host one (libnice drops one
# that does not).
STUN_ADDRESS = "10.98.0.2"
NAT_ADDRESS = "10.98.0.3"
STUN_URI = f"stun:{STUN_ADDRESS}:3478"
NAT = ("table ip stun_nat { chain post { type nat hook postrouting priority 100; "
       f'oifname "d0" ip daddr {STUN_ADDRESS} snat to {NAT_ADDRESS}; }}; }}')
# Janus's candidates name 10.98.0.4, sent on to its own 10.98.0.1: the box
# (whose checks never go to one of its own addresses, candidate_allowed)
# checks the server's candidates itself, as it would a server elsewhere.
# After an ICE restart only its own checks revive the path: Janus sends
# none (measured; the box's first connection lived on Janus's checks).
JANUS_PUBLIC = "10.98.0.4"
JANUS_NAT = ("table ip janus_nat { chain out { type nat hook output priority -100; "
             f"ip daddr {JANUS_PUBLIC} dnat to {ADDRESS}; }}; }}")

# The link loses the box's requests until its offer is out (dropped on the
# STUN server's side: a drop on the box's own side fails its send, and
# libnice gives up at once; and this kernel has no netem to delay them):
# libnice's next retransmission then gets the answer.
# libnice asks at 0, 0.2, 0.6 and 1.4 s and gives up at 2 s after gathering
# starts (measured 2.02 s), about when the box's default gather timeout (2 s,
# from the branch's start) sends the offer: the test's box offers after
# 0.8 s, so that the retransmission at 1.4 s comes after it. (Gathering
# starts up to 0.5 s after the branch, measured: with 0.3 s the offer went
# out now and then with no candidate at all.)
GATHER_TIMEOUT_MS = 800
STUN_LOST = ("table inet stun_lost { chain in { type filter hook prerouting priority 0; "
             "udp dport 3478 drop; }; }")
STUN_FOUND = "delete table inet stun_lost"


def netns(pid: int | None) -> list[str]:
    """A command's prefix: into the network namespace of the process ``pid``
    (None: this one)."""
    return ["nsenter", "-t", str(pid), "-n"] if pid else []


def nft(rules: str, netns_of: int | None = None) -> None:
    subprocess.run(netns(netns_of) + ["nft", "-f", "-"], input=rules.encode(), check=True,
                   env=TOOL_ENV)


def run(*commands: str, netns_of: int | None = None) -> None:
    for command in commands:
        subprocess.run(netns(netns_of) + command.split(), check=True, env=TOOL_ENV)


async def wait_carrier(device: str) -> None:
    """Until the veth ``device`` is up with its carrier again (its far end
    moved to another namespace and came up there)."""
    with trio.fail_after(10):
        while json.loads(subprocess.run(["ip", "-j", "link", "show", device], check=True,
                                        capture_output=True, env=TOOL_ENV).stdout
                         )[0]["operstate"] != "UP":
            await trio.sleep(0.01)


@asynccontextmanager
async def stun_server_behind_nat(tmp: Path) -> AsyncIterator[Callable[[], None]]:
    """coturn as a plain STUN server in a namespace of its own (unshare -n:
    it waits for a line on its stdin, its link set up meanwhile), its link
    losing the box's requests until ``found``, which it yields, is called."""
    log = open(tmp / "turnserver.log", "wb")
    process = await trio.lowlevel.open_process(
        ["unshare", "-n", "sh", "-c",
         "read ready && exec turnserver -n --stun-only --no-cli --no-tls --no-dtls "
         f"--listening-ip {STUN_ADDRESS} --listening-port 3478 --log-file stdout "
         f"--simple-log --pidfile {tmp}/turnserver.pid"],
        stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=TOOL_ENV)
    log.close()
    try:
        # unshare has made its namespace once sh runs in it
        with trio.fail_after(10):
            while Path(f"/proc/{process.pid}/comm").read_text().strip() != "sh":
                await trio.sleep(0.01)
        d0_mac = json.loads(subprocess.run(["ip", "-j", "link", "show", "d0"], check=True,
                                           capture_output=True, env=TOOL_ENV).stdout)[0]["address"]
        run(f"ip link set d1 netns {process.pid}")
        run("ip link set lo up", f"ip addr add {STUN_ADDRESS}/24 dev d1", "ip link set d1 up",
            f"ip neigh add {NAT_ADDRESS} lladdr {d0_mac} dev d1", netns_of=process.pid)
        await wait_carrier("d0")
        nft(NAT)
        nft(STUN_LOST, netns_of=process.pid)
        await process.stdin.send_all(b"go\n")
        with trio.fail_after(10):   # its UDP socket bound
            while f"{STUN_ADDRESS}:3478" not in subprocess.run(
                    netns(process.pid) + ["ss", "-Hlun"],
                    capture_output=True, text=True, env=TOOL_ENV).stdout:
                await trio.sleep(0.05)
        yield lambda: nft(STUN_FOUND, netns_of=process.pid)
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdin.aclose()


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


async def wait_participants(janus: Janus) -> list[dict]:
    with trio.fail_after(10):
        while not (found := await participants(janus)):
            await trio.sleep(0.1)
    return found


async def wait_publication(box, predicate, timeout: float = 20) -> dict:
    """The publication's status once ``predicate`` (a state, or a test of
    the status) holds."""
    if isinstance(predicate, str):
        state, predicate = predicate, lambda status: status["state"] == state
    status = None
    with trio.move_on_after(timeout):
        while True:
            status = (await box.client.get("/api/publications")).json()[0]
            if predicate(status):
                return status
            await trio.sleep(0.05)
    raise AssertionError(f"the publication did not get there within {timeout} s: {status}")


async def subscriber_hears(janus: Janus, feed: int, out: dict) -> None:
    """An aiortc subscriber of ``feed`` through VideoRoom's API: the Opus
    parameters it is offered and what each ear hears go into ``out``."""
    subscriber = JanusClient(janus.url)
    try:
        await subscriber.attach("janus.plugin.videoroom")
        async with open_aiortc_listener() as peer:
            await subscriber.message({"request": "join", "ptype": "subscriber",
                                      "room": VIDEOROOM, "feed": feed})
            offer = (await subscriber.next_event("jsep"))["jsep"]["sdp"]
            out["subscriber_offer_fmtp"] = [line for line in offer.splitlines()
                                            if line.startswith("a=fmtp:")]
            answer = await peer.answer_offer(offer)
            await subscriber.message({"request": "start", "room": VIDEOROOM},
                                     {"type": "answer", "sdp": answer})
            await peer.wait_first_packet(timeout=10)
            left, right = await peer.record_stereo(1.0)
            out["left_hz"], out["right_hz"] = dominant_frequency(left), dominant_frequency(right)
    finally:
        await subscriber.aclose()


@asynccontextmanager
async def open_box(tmp: Path, url: str, out: dict, live: bool, ice_servers: tuple[str, ...],
                   engine: dict):
    """The box (its ICE on d0, its UDP on BOX_PORTS), publishing "main" to
    ``url``."""
    config = make_config(tmp / "box")
    config = config.replace(engine=dataclasses.replace(
        config.engine, ice_addresses=(ADDRESS,), min_port=BOX_PORTS[0],
        max_port=BOX_PORTS[1],
        stun_server=ice_servers[0].replace("stun:", "stun://") if ice_servers else None,
        **engine))
    async with open_server(config) as box:
        r = await box.client.post("/api/publications", json={
            "id": "to-janus", "sink_id": "main", "url": url, "token": "t" * 32})
        assert r.status_code == 201, r.text
        if live:
            out["resource"] = (await wait_publication(box, "live"))["resource"]
        yield box


@asynccontextmanager
async def publishing(tmp: Path, out: dict, *, ice_servers: tuple[str, ...] = (),
                     live: bool = True, janus_address: str = "",
                     refusing: RestartRefusing | None = None, **engine):
    """Janus, simple-whip-server with an endpoint (its 201 naming
    ``ice_servers`` in Link headers) and a box publishing "main" there,
    (``live``) live; yields (janus, whip server, box). ``engine``: engine
    settings of the box's; ``janus_address``: the address Janus's candidates
    name (Janus's public_address); ``refusing``: the box publishes through
    it (a proxy refusing ICE restarts). Their logs go to stderr when
    the block fails."""
    janus = Janus(tmp / "janus", ice="d0", videoroom=True, public_address=janus_address)
    await janus.start()
    whip = WhipServer(tmp, janus.ws_url)
    try:
        await whip.start()
        url = await whip.create_endpoint("box", VIDEOROOM, token="t" * 32,
                                         ice_servers=ice_servers)
        async with trio.open_nursery() as nursery:
            if refusing is not None:
                refusing.upstream = f"http://127.0.0.1:{whip.port}"
                await nursery.start(refusing.run)
                url = url.replace(refusing.upstream, refusing.url)
            async with open_box(tmp, url, out, live, ice_servers, engine) as box:
                yield janus, whip, box
            nursery.cancel_scope.cancel()
    except BaseException:
        print(json.dumps(out), whip.log(), janus.log(), file=sys.stderr)
        raise
    finally:
        await whip.stop()
        await janus.stop()


async def breaks(tmp: Path) -> dict:
    out: dict = {}
    async with publishing(tmp, out) as (janus, whip, box):
        out["participants"] = found = await wait_participants(janus)
        await subscriber_hears(janus, found[0]["id"], out)
        # the path breaks without a word (a firewall drops the box's UDP):
        # the box notices the silence, and publishes again once it heals
        await heard_anew(box)
        nft(BREAK)
        broken = await wait_publication(box, "retrying", timeout=3 * SILENT_S)
        out["broken_error"] = broken["error"]
        nft(HEAL)
        healed = await wait_publication(box, "live", timeout=30)
        out["attempts_after_heal"] = healed["attempts"]
        await wait_participants(janus)
        assert (await box.client.delete("/api/publications/to-janus")).status_code == 204
        with trio.fail_after(10):
            while await participants(janus):
                await trio.sleep(0.1)
        out["participants_after"] = []
    return out


def posted_and_patched(whip_log: str) -> tuple[list[str], list[str]]:
    """The candidate lines simple-whip-server was sent: in the POSTed offer,
    and in PATCHes (its whip:debug log prints each request's body after the
    route it came to)."""
    posted: list[str] = []
    patched: list[str] = []
    into = None
    for line in whip_log.splitlines():
        if "/endpoint/: box" in line:
            into = posted
        elif "/resource[trickle]/: box" in line:
            into = patched
        elif (found := re.search(r"a=candidate:\S.*", line)) and into is not None:
            into.append(found.group(0).strip())
    return posted, patched


async def trickle(tmp: Path) -> dict:
    out: dict = {}
    post = publications.Publications._post

    async def offer_out(self, http, spec, offer):
        stun_found()   # the offer is out of webrtcbin: the STUN server may answer now
        return await post(self, http, spec, offer)

    publications.Publications._post = offer_out
    async with stun_server_behind_nat(tmp) as stun_found, \
            publishing(tmp, out, ice_servers=(STUN_URI,), live=False,
                       gather_timeout_ms=GATHER_TIMEOUT_MS) as (janus, whip, box):
        status = await wait_publication(box, lambda s: s["trickled"] or s["trickle_error"],
                                        timeout=15)
        out["trickled"], out["trickle_error"] = status["trickled"], status["trickle_error"]
        out["ice_servers"], out["attempts"] = status["ice_servers"], status["attempts"]
        out["posted"], out["patched"] = posted_and_patched(whip.log(tail=None))
        # live in Janus too before a subscriber joins (else it gets no offer)
        out["state"] = (await wait_publication(box, "live"))["state"]
        found = await wait_participants(janus)
        await subscriber_hears(janus, found[0]["id"], out)
    return out


async def restart(tmp: Path) -> dict:
    out: dict = {}
    nft(JANUS_NAT)
    async with publishing(tmp, out, janus_address=JANUS_PUBLIC) as (janus, whip, box):
        await heard_anew(box)
        # the path breaks: the box, noticing the silence, restarts ICE on the
        # same resource; the path heals as the server took the restart
        nft(BREAK)
        restarted = await wait_publication(box, lambda s: s["ice_restarts"] or s["state"] != "live",
                                           timeout=3 * SILENT_S)
        nft(HEAL)
        out["restart_status"] = {k: restarted[k] for k in
                                 ("state", "attempts", "ice_restarts", "ice_restart_error",
                                  "resource", "error")}
        await heard_anew(box)
        status = await wait_publication(box, "live")
        out["after"] = {k: status[k] for k in ("attempts", "ice_restarts", "resource")}
        found = await wait_participants(janus)
        await subscriber_hears(janus, found[0]["id"], out)
        log = whip.log(tail=None)
        out["posts"] = log.count("/endpoint/: box")
        out["restarts_logged"] = log.count("[box] Performing ICE restart")
    return out


class RestartRefusing:
    """simple-whip-server behind a proxy that answers ICE restarts (PATCHes
    with ``If-Match: "*"``) 405, as a server without them does (RFC 9725
    section 4.4), and passes every other request on."""

    FORWARDED = ("content-type", "location", "etag", "link", "accept-patch")

    def __init__(self):
        self.upstream = ""                # http://127.0.0.1:port, set by publishing
        self.refused = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with httpx.AsyncClient(timeout=10) as self.http:
            task_status.started()
            await trio.serve_listeners(self.serve, listeners)

    async def serve(self, stream):
        async with stream:
            if (request := await read_http_request(stream)) is None:
                return
            method, target, headers, body = request
            if method == "PATCH" and headers.get("if-match") == '"*"':
                self.refused += 1
                status, reply, answer = 405, {}, b""
            else:
                sent = {k: v for k, v in headers.items()
                        if k in ("content-type", "authorization", "if-match")}
                response = await self.http.request(method, self.upstream + target,
                                                   headers=sent, content=body)
                status, answer = response.status_code, response.content
                reply = {k: v for k, v in response.headers.multi_items()
                         if k.lower() in self.FORWARDED}
            extra = "".join(f"{k}: {v}\r\n" for k, v in reply.items())
            await stream.send_all(f"HTTP/1.1 {status} X\r\n{extra}Content-Length: "
                                  f"{len(answer)}\r\nConnection: close\r\n\r\n".encode()
                                  + answer)


async def refused(tmp: Path) -> dict:
    out: dict = {}
    proxy = RestartRefusing()
    async with publishing(tmp, out, refusing=proxy) as (janus, whip, box):
        await heard_anew(box)
        nft(BREAK)
        broken = await wait_publication(box, "retrying", timeout=3 * SILENT_S)
        out["broken"] = {k: broken[k] for k in ("error", "ice_restarts", "ice_restart_error")}
        nft(HEAL)
        healed = await wait_publication(box, "live", timeout=30)
        out["attempts_after_heal"] = healed["attempts"]
        out["refused"] = proxy.refused
        out["posts"] = whip.log(tail=None).count("/endpoint/: box")
        found = await wait_participants(janus)
        await subscriber_hears(janus, found[0]["id"], out)
    return out


if __name__ == "__main__":
    scenarios = {"break": breaks, "trickle": trickle, "restart": restart, "refused": refused}
    run_in_namespace(scenarios[(sys.argv[1:] or ["break"])[0]])
