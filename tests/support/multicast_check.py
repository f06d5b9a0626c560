"""Network sources on multicast, between two network namespaces of their own
(tests/test_network_sources.py starts this under ``unshare -n``; it starts
the senders' side under another): a veth pair, v0 here on 10.99.0.0/24 and
fd00:99::/64, v1 in the senders' namespace. The engine's sources join an
IPv4 and an IPv6 group on v0. Scream senders on v1 send from 10.99.0.2 and
fd00:99::2 (v0's subnets) and from 198.51.100.7 (a subnet of no interface
of the box's). Prints the sources' stats as JSON.

    unshare -n python tests/support/multicast_check.py"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio  # noqa: E402

from appliance.sap import SAP_GROUPS, SapListener  # noqa: E402
from appliance.sdp import describe_stream  # noqa: E402
from tests.support.realtime import run_realtime  # noqa: E402
from tests.support.rtp import gstreamer_sender  # noqa: E402
from tests.support.sap import announcement  # noqa: E402
from tests.support.scream import ScreamSender  # noqa: E402

PORT = 4010
AES67_GROUP, AES67_PORT = "239.69.1.10", 5004
AES67_SDP = (f"v=0\r\no=- 1 1 IN IP4 10.99.0.2\r\ns=Desk\r\nc=IN IP4 {AES67_GROUP}/32\r\n"
             f"t=0 0\r\nm=audio {AES67_PORT} RTP/AVP 97\r\na=rtpmap:97 L24/48000/2\r\n"
             "a=ptime:1\r\n")
PACKETS = 100    # each sender; a few may go before the link is up on both sides
ENOUGH = 50
V4, V6 = "239.255.77.77", "ff15::77"


# iproute2 as it is: not under the sanitizer the engine's tests may preload
# (native/sanitize.sh), which finds faults of its own in `ip route show`
TOOL_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def run(commands: list[str]) -> None:
    for command in commands:
        subprocess.run(command.split(), check=True, env=TOOL_ENV)


def shown(command: str) -> str:
    return subprocess.run(command.split(), capture_output=True, text=True, env=TOOL_ENV).stdout


async def senders() -> None:
    """The senders' namespace: v1 once it has been moved here."""
    print("ready", flush=True)   # in the namespace of our own now: v1 may come
    sys.stdin.readline()
    run(["ip link set lo up", "ip link set v1 up",
         "ip addr add 10.99.0.2/24 dev v1", "ip addr add 198.51.100.7/24 dev v1",
         "ip -6 addr add fd00:99::2/64 dev v1 nodad", "ip route add 224.0.0.0/4 dev v1"])
    with trio.fail_after(5):   # the carrier (both ends up), and IPv6's group route on it
        while "LOWER_UP" not in shown("ip -o link show v1") \
                or "ff00::/8 dev v1" not in shown("ip -6 route show table local"):
            await trio.sleep(0.01)
    streams = [ScreamSender(V4, PORT, source="10.99.0.2"),
               ScreamSender(V4, PORT, source="198.51.100.7", hz=440.0),
               ScreamSender(V6, PORT, source="fd00:99::2", interface="v1")]
    # the desk: GStreamer's AES67 sender to its group, and its SAP announcement
    desk = gstreamer_sender(AES67_GROUP, AES67_PORT, pt=97)
    desk[desk.index("bind-address=" + AES67_GROUP)] = "multicast-iface=v1"
    announcer = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await announcer.bind(("10.99.0.2", 0))
    async with trio.open_nursery() as nursery:
        gst = await nursery.start(partial(run_realtime, desk, env=TOOL_ENV))
        for stream in streams:
            nursery.start_soon(lambda s=stream: s.run(packets=PACKETS))
        for _ in range(5):
            await announcer.sendto(announcement(AES67_SDP), (SAP_GROUPS[0], 9875))
            await trio.sleep(0.1)
        sys.stdin.readline()   # the receiver has heard enough
        gst.kill()
    announcer.close()
    for stream in streams:
        stream.close()


async def receiver() -> None:
    from appliance import EngineSettings, RouteSpec, SinkSpec, SourceSpec, open_engine

    run(["ip link set lo up", "ip link add v0 type veth peer name v1", "ip link set v0 up",
         "ip addr add 10.99.0.1/24 dev v0", "ip -6 addr add fd00:99::1/64 dev v0 nodad",
         # a way back to the stranger's subnet: its datagrams arrive, not as martians
         "ip route add 198.51.100.0/24 dev v0"])
    async with open_engine(EngineSettings(ice_addresses=("127.0.0.1",),
                                          level_interval_ms=-1)) as engine, \
            trio.open_nursery() as nursery:
        # a group's default allow_from: the subnets of the interface it is joined on
        await engine.add_source("v4", SourceSpec(kind="scream", address=V4, port=PORT,
                                                 interface="v0"))
        await engine.add_source("v6", SourceSpec(kind="scream", address=V6, port=PORT,
                                                 interface="v0"))
        await engine.add_sink("main", SinkSpec(kind="opus"))
        for source in ("v4", "v6"):
            await engine.add_route(source, RouteSpec(source, "main"))
        # the desk's stream, added from its announcement below
        sap = SapListener(9875, interface="v0")
        await nursery.start(sap.run)
        side = await trio.lowlevel.open_process(
            ["unshare", "-n", sys.executable, __file__, "senders"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE)
        with trio.fail_after(30):   # moved before it unshared, v1 would stay here
            assert (await side.stdout.receive_some(64)).startswith(b"ready")
        run([f"ip link set v1 netns {side.pid}"])
        await side.stdin.send_all(b"go\n")
        with trio.fail_after(10):
            while not sap.streams():
                await trio.sleep(0.02)
        announced = sap.streams()[0]
        fields = describe_stream(announced["sdp"]).source_fields()
        fields.pop("name", None)   # the entity's, not the engine's
        await engine.add_source("desk", SourceSpec(**fields, interface="v0"))
        await engine.add_route("desk", RouteSpec("desk", "main"))
        with trio.fail_after(10):
            while (engine.net_source_stats("v4").packets < ENOUGH
                   or engine.net_source_stats("v4").refused < ENOUGH
                   or engine.net_source_stats("v6").packets < ENOUGH
                   or engine.net_source_stats("desk").packets < 10 * ENOUGH):
                await trio.sleep(0.02)
        await side.stdin.send_all(b"done\n")
        if await side.wait() != 0:
            raise SystemExit("the senders failed")
        nursery.cancel_scope.cancel()
        print(json.dumps({**{name: dataclasses.asdict(engine.net_source_stats(name))
                             for name in ("v4", "v6", "desk")},
                          "announced": {k: announced[k] for k in ("name", "address", "format")}}))


if __name__ == "__main__":
    trio.run(senders if sys.argv[1:] == ["senders"] else receiver)
