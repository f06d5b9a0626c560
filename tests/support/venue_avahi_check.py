"""``/venue`` through a real avahi-daemon, between two network namespaces of
their own (tests/web/test_venue_avahi.py starts this under ``unshare -n``:
box A; it starts box B under another): a veth pair, va0 here with
10.77.0.1, vb0 in B's namespace with 10.77.0.2. Each namespace runs its own
system bus (tests/support/daemons.py), its own avahi-daemon on it
(its own mount namespace: a private /run for its pid file and socket, and
the image's service file, unchanged, as /etc/avahi/services) and a box on
port 80 whose ``Venue`` browses with the product's ``avahi_browse``.

Each box's /venue lists the other once avahi has resolved it (polled).
Then B's avahi-daemon stops (its goodbye): A's avahi no longer lists B.
With ``--until-gone``, B's box then stops too, and A's /venue, refreshed
only by A's own loop at its shipped intervals, drops B. Prints JSON.

    unshare -n python tests/support/venue_avahi_check.py [--until-gone]"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from appliance.venue import avahi_browse  # noqa: E402
from tests.support.daemons import end, open_system_bus  # noqa: E402
from tests.web.conftest import Server, make_config, open_server  # noqa: E402
from tests.web.test_venue import Page  # noqa: E402

SERVICE_FILE = ROOT / "image" / "files" / "common" / "etc" / "avahi" / "services" / "appliance.service"
# iproute2 and the daemons as they are: not under the sanitizer the engine's
# tests may preload (native/sanitize.sh)
TOOL_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


@dataclass(frozen=True)
class Side:
    name: str           # the box's name
    host: str           # avahi's host name: <host>.local
    interface: str
    address: str

    @property
    def base(self) -> str:   # what the other's /venue links to (port 80: none)
        return f"http://{self.host}.local"


A = Side("Hall A", "venue-a", "va0", "10.77.0.1")
B = Side("Room B", "venue-b", "vb0", "10.77.0.2")

# B's channels: main and fr (the config's, as admin calls need HTTPS off loopback)
B_GRAPH = {
    "sources": [{"id": "tone", "kind": "tone"}],
    "sinks": [{"id": "main", "kind": "opus"},
              {"id": "fr", "name": "Français", "kind": "opus", "language": "fr"}],
    "routes": [{"id": "tone-main", "source_id": "tone", "sink_id": "main"},
               {"id": "tone-fr", "source_id": "tone", "sink_id": "fr"}],
}

# this namespace's link only, IPv4 only, nothing published but the services
AVAHI_CONF = """[server]
host-name={host}
domain-name=local
use-ipv4=yes
use-ipv6=no
allow-interfaces={interface}
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
"""

# avahi's pid file and socket (/run/avahi-daemon) and services directory are
# fixed paths: in a mount namespace of its own, a private /run and ours
AVAHI = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs venue-run /run && mount --bind "$0" /etc/avahi/services && exec "$@"']


def run(*commands: str) -> None:
    for command in commands:
        subprocess.run(command.split(), check=True, env=TOOL_ENV)


async def open_daemon(command: list[str], log: Path) -> trio.Process:
    with open(log, "wb") as out:
        return await trio.lowlevel.open_process(command, stdout=out, stderr=out, env=TOOL_ENV)


class Lines:
    """Lines from a trio stream (the other side's stdout)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream, self.buffer = stream, b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("the other side ended")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


@dataclass
class Box:
    side: Side
    server: Server
    avahi: trio.Process
    folder: Path

    def logs(self) -> str:
        return "".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
                       for log in sorted(self.folder.glob("*.log")))


@asynccontextmanager
async def announced_box(side: Side, folder: Path, graph: dict | None = None
                        ) -> AsyncIterator[Box]:
    """This namespace's end of the link up, its bus, the box on port 80 (its
    channels from ``graph``, or just main), then its avahi-daemon announcing it."""
    run("ip link set lo up", f"ip link set {side.interface} multicast on",
        f"ip addr add {side.address}/24 dev {side.interface}", f"ip link set {side.interface} up")
    services = folder / "services"
    services.mkdir(parents=True)
    shutil.copy(SERVICE_FILE, services)
    (folder / "avahi.conf").write_text(AVAHI_CONF.format(host=side.host,
                                                         interface=side.interface))
    async with open_system_bus(folder, TOOL_ENV) as address:
        # for avahi-daemon, and for the box's avahi-browse (appliance.venue)
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = TOOL_ENV["DBUS_SYSTEM_BUS_ADDRESS"] = address
        config = make_config(folder / "state", data=graph, host=side.address, port=80)
        async with open_server(config.replace(name=side.name)) as server:
            avahi = await open_daemon(
                [*AVAHI, str(services), "avahi-daemon", "--no-drop-root", "--no-chroot",
                 "--no-rlimits", "-f", str(folder / "avahi.conf")], folder / "avahi.log")
            try:
                yield Box(side, server, avahi, folder)
            finally:
                await end(avahi)


async def page(box: Box) -> tuple[Page, str]:
    html = (await box.server.client.get("/venue")).text
    return Page(html), html


async def venue_until(box: Box, shown: Callable[[Page], bool], timeout: float,
                      refresh: bool = True) -> tuple[Page, str]:
    """Polls the box's /venue until ``shown``; with ``refresh``, refreshing
    its venue each time (as its loop does, without waiting its interval)."""
    found = Page("")
    with trio.move_on_after(timeout):
        while True:
            if refresh:
                await box.server.service.venue.refresh()
            found, html = await page(box)
            if shown(found):
                return found, html
            await trio.sleep(0.2)
    raise AssertionError(f"{box.side.name}'s /venue: {found.boxes}\n{box.logs()}")


def seen(found: Page, html: str, other: Side) -> dict:
    return {"boxes": found.boxes, "channels": sorted(found.channels), "qr": found.qr,
            "other_name": other.name in html}


async def box_b(folder: Path) -> None:
    """B's namespace: up once vb0 is here; says what its /venue shows; when
    told, stops its avahi-daemon, then its box (the namespace and the link
    stay, as a LAN does), then ends (or when A ends: stdin closed)."""
    print("ready", flush=True)   # in a namespace of our own now: vb0 may come

    async def told(what: str) -> bool:
        return await trio.to_thread.run_sync(sys.stdin.readline,
                                             abandon_on_cancel=True) == what + "\n"

    if not await told("go"):
        return
    async with announced_box(B, folder, B_GRAPH) as box:
        found, html = await venue_until(box, lambda p: A.base in p.boxes, timeout=30)
        print(json.dumps(seen(found, html, A)), flush=True)
        if not await told("stop avahi"):
            return
        await end(box.avahi)
        print("avahi stopped", flush=True)
        if not await told("stop box"):
            return
    print("box stopped", flush=True)
    await told("end")


async def box_a(folder: Path, until_gone: bool) -> dict:
    began = trio.current_time()
    run("ip link set lo up")
    side = await trio.lowlevel.open_process(
        ["unshare", "-n", sys.executable, __file__, "box-b", str(folder / "b")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out: dict = {}
    try:
        lines = Lines(side.stdout)
        with trio.fail_after(30):   # made before it unshared, vb0 would land here
            assert await lines.next() == "ready"
        run(f"ip link add {A.interface} type veth peer name {B.interface} netns {side.pid}")
        await side.stdin.send_all(b"go\n")
        async with announced_box(A, folder / "a") as box:
            out["a_up_s"] = trio.current_time() - began
            found, html = await venue_until(box, lambda p: f"{B.base}/listen/fr" in p.qr,
                                            timeout=30)
            out["a_sees"] = seen(found, html, B)
            out["a_sees_s"] = trio.current_time() - began
            with trio.fail_after(30):
                out["b_sees"] = json.loads(await lines.next())
            # B's avahi-daemon stops, saying goodbye: A's avahi forgets B
            await side.stdin.send_all(b"stop avahi\n")
            with trio.fail_after(15):
                assert await lines.next() == "avahi stopped"
            stopped = trio.current_time()
            with trio.fail_after(15):
                while any(there.address == B.address for there in await avahi_browse()):
                    await trio.sleep(0.2)
            out["browse_gone_s"] = trio.current_time() - stopped
            if until_gone:
                # then B's box stops too: A's own loop, at its shipped
                # intervals, is what drops B from A's /venue
                await side.stdin.send_all(b"stop box\n")
                with trio.fail_after(30):
                    assert await lines.next() == "box stopped"
                found, _ = await venue_until(box, lambda p: B.base not in p.boxes, timeout=90,
                                             refresh=False)
                out["page_gone_s"] = trio.current_time() - stopped
                out["after"] = found.boxes
    finally:
        side.stdin.close()   # B cleans up and ends; or else it is made to
        with trio.CancelScope(shield=True), trio.move_on_after(20):
            await side.wait()
        await end(side)
        await side.stdout.aclose()
    return out


if __name__ == "__main__":
    # SIGTERM (the test cancelled) as Ctrl-C: trio raises KeyboardInterrupt
    # in the main task, and every finally above ends its daemons (B, whose
    # stdin then closes, ends its own)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    if sys.argv[1:2] == ["box-b"]:
        trio.run(box_b, Path(sys.argv[2]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(trio.run(box_a, Path(tmp), "--until-gone" in sys.argv[1:])))
