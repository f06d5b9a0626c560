"""Listeners on Janus relays, in a network namespace of the test's own
(tests/web/test_relays.py starts this under ``unshare -n``): Janus gathers no
ICE candidates on loopback, so an interface d0 with 10.98.0.1 (an address
that exists only in this namespace; a veth pair, as containers may lack the
dummy driver) carries every WebRTC path: the
box's, two Janus relays' and the aiortc listeners'. Prints JSON.

The box takes one listener (``max_listeners = 1``), which it has; a second
listener, following the listen page's protocol (``RelayAwareListener``), is
sent to a Janus relay and hears the box's tone; Janus's viewer count reaches
``/api/status``. Its relay is killed: it hears the tone again from the other
relay, and the time from the kill to its first packet there is measured.

    unshare -n python tests/support/janus_check.py"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aioice.ice  # noqa: E402
import trio  # noqa: E402

from support import webrtc  # noqa: E402
from support.janus import Janus, RelayAwareListener  # noqa: E402
from support.webrtc import dominant_frequency, open_aiortc_listener  # noqa: E402
from tests.web.conftest import make_config, open_server  # noqa: E402

ADDRESS = "10.98.0.1"
TOOL_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def namespace(*, default_route: bool = False) -> None:
    """``default_route``: every other address through d0 too (nothing there
    answers), for Firefox ESR, which gathers no ICE candidates without one."""
    for command in ("ip link set lo up", "ip link add d0 type veth peer name d1",
                    f"ip addr add {ADDRESS}/24 dev d0", "ip link set d1 up",
                    "ip link set d0 up", *(["ip route add default dev d0"] if default_route else [])):
        subprocess.run(command.split(), check=True, env=TOOL_ENV)
    gather_on_address()


def run_in_namespace(main: Callable[..., Awaitable[dict]], *args: object,
                     default_route: bool = False) -> None:
    """A scenario script's entry point (under ``unshare -n``): d0 set up,
    ``main(folder, *args)`` in a temporary folder, its findings printed as
    JSON on the last line (``support.namespaces.run_scenario`` reads them)."""
    namespace(default_route=default_route)
    with tempfile.TemporaryDirectory() as tmp:
        result = trio.run(main, Path(tmp), *args)
    print(json.dumps(result))


def gather_on_address() -> None:
    """This process's aiortc peers gather on d0 only (tests/support/webrtc.py:
    loopback); each process of the namespace that holds peers calls it."""
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [ADDRESS]
    assert webrtc.aioice.ice.get_host_addresses is aioice.ice.get_host_addresses


async def relay_status(box, relay_id: str, predicate, timeout: float = 20) -> dict:
    with trio.fail_after(timeout):
        while True:
            for status in (await box.client.get("/api/relays")).json():
                if status["id"] == relay_id and predicate(status):
                    return status
            await trio.sleep(0.05)


async def main(tmp: Path) -> dict:
    relays = {name: Janus(tmp / name, ice="d0") for name in ("j1", "j2")}
    for janus in relays.values():
        await janus.start()
    config = make_config(tmp / "box", max_listeners=1)
    config = config.replace(engine=dataclasses.replace(config.engine, ice_addresses=(ADDRESS,)))
    out: dict = {}
    try:
        async with open_server(config) as box, trio.open_nursery() as nursery:
            for name, janus in relays.items():
                r = await box.client.post("/api/relays", json={
                    "id": name, "url": janus.url, "channels": ["main"]})
                assert r.status_code == 201, r.text
                await relay_status(box, name, lambda s: s["state"] == "up")
            out["where_with_room"] = (await box.client.get("/api/listen/where/main")).json()
            # the box's one listener, then one that goes to a relay
            first = RelayAwareListener(box.client, "main", open_aiortc_listener)
            await nursery.start(first.run)
            second = RelayAwareListener(box.client, "main", open_aiortc_listener)
            await nursery.start(second.run)
            out["first"], out["second"] = first.where, second.where
            out["second_hz"] = dominant_frequency(await second.peer.record(1.0))
            status = await relay_status(box, second.where, lambda s: s["viewers"] == 1)
            out["viewers"] = status["viewers"]
            # its relay dies: back on air from the other one
            lost = second.where
            switched = second.switched
            killed = time.monotonic()
            await relays[lost].stop()
            with trio.fail_after(15):
                await switched.wait()
            out["failover_s"] = second.peer.first_packet_time - killed
            out["after"] = second.where
            out["after_hz"] = dominant_frequency(await second.peer.record(1.0))
            # the box notices at its next health round (every 2 s)
            out["lost_state"] = (await relay_status(box, lost, lambda s: s["state"] != "up",
                                                    timeout=5))["state"]
            nursery.cancel_scope.cancel()
    finally:
        for janus in relays.values():
            await janus.stop()
    return out


if __name__ == "__main__":
    run_in_namespace(main)
