"""Listeners moved to Janus relays, and a relay that dies under them (issue 20).

In a network namespace of its own (it starts itself again under
``unshare -n``, as tests/support/janus_check.py: Janus gathers no ICE
candidates on loopback), the box (in this process, its tone on "main") has
two real Janus relays set in its config (``[[relays]]``). Listeners are
``RelayAwareListener``s (aiortc, the listen page's protocol: ask the box
where, play the box over WHEP or a relay's mountpoint through Janus's API,
ask again after 1 s without a packet).

1. A burst of N listeners served by the box (``relays_first`` off), then,
   in the same run, a burst of N sent to the relays (``relays_first`` on):
   each one's time from its first request (``GET /api/listen/where``) to its
   first RTP packet, p50/p95/max, side by side.
2. The relay carrying the most of them is killed (SIGKILL): for each of
   its listeners, the time from the kill to its first packet on the new
   path (the other relay), p50/p95/max.

    .venv/bin/python bench/relay_failover.py [--burst 50]

Both bursts include each aiortc peer's own set-up (a thread, a peer
connection) and run in the box's process: the same cost on both sides.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import trio  # noqa: E402

from lean_bench import pct  # noqa: E402
from support.janus import Janus, RelayAwareListener  # noqa: E402
from support.janus_check import ADDRESS, namespace, relay_status  # noqa: E402
from support.webrtc import open_aiortc_listener  # noqa: E402
from tests.web.conftest import make_config, open_server  # noqa: E402

INNER = "RELAY_FAILOVER_IN_NAMESPACE"


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    ms = [v * 1000 for v in values]
    return (f"p50 {pct(ms, 50):6.0f} ms  p95 {pct(ms, 95):6.0f} ms  "
            f"max {max(ms):6.0f} ms  (n={len(ms)})")


async def burst(box, nursery: trio.Nursery, n: int) -> tuple[list[RelayAwareListener],
                                                             list[float], dict]:
    """N listeners started at once; each one's first request -> first packet.
    A listener whose run fails is kept in ``errors`` (by listener), not fatal."""
    listeners = [RelayAwareListener(box.client, "main", open_aiortc_listener) for _ in range(n)]
    times: list[float] = []
    errors: dict[RelayAwareListener, str] = {}

    async def join(listener: RelayAwareListener) -> None:
        async def run(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                await listener.run(task_status=task_status)
            except Exception as error:
                errors[listener] = f"{type(error).__name__}: {error}"[:200]
                listener.switched.set()   # nobody waits for it in vain
        t0 = time.monotonic()
        await nursery.start(run)
        if listener.peer is not None and listener.peer.first_packet_time is not None:
            times.append(listener.peer.first_packet_time - t0)

    async with trio.open_nursery() as starting:
        for listener in listeners:
            starting.start_soon(join, listener)
    return listeners, times, errors


async def main(tmp: Path, n: int) -> None:
    relays = {name: Janus(tmp / name, ice="d0") for name in ("j1", "j2")}
    for janus in relays.values():
        await janus.start()
    # the relays come from the box's config file, as at a venue
    config = make_config(tmp / "box", data={"relays": [
        {"id": name, "url": janus.url, "channels": ["main"]} for name, janus in relays.items()]})
    config = config.replace(engine=dataclasses.replace(config.engine, ice_addresses=(ADDRESS,)))
    try:
        async with open_server(config) as box:
            for name in relays:
                await relay_status(box, name, lambda s: s["state"] == "up")
            async with trio.open_nursery() as held:
                on_box, box_times, box_errors = await burst(box, held, n)
                assert all(listener.where == "box" for listener in on_box), \
                    Counter(listener.where for listener in on_box)
                held.cancel_scope.cancel()
            await box.wait_idle(timeout=30)
            r = await box.client.patch("/api/sinks/main", json={"relays_first": True})
            assert r.status_code == 200, r.text
            async with trio.open_nursery() as held:
                on_relays, relay_times, relay_errors = await burst(box, held, n)
                where = Counter(listener.where for listener in on_relays)
                lost = max(relays, key=lambda name: where[name])
                moving = [listener for listener in on_relays if listener.where == lost]
                switched = [listener.switched for listener in moving]
                killed = time.monotonic()
                await relays[lost].stop()
                with trio.move_on_after(60):
                    for event in switched:
                        await event.wait()
                failover = [listener.peer.first_packet_time - killed for listener in moving
                            if listener not in relay_errors and listener.peer is not None
                            and listener.peer.first_packet_time is not None
                            and listener.peer.first_packet_time > killed]
                after = Counter(listener.where for listener in moving)
                held.cancel_scope.cancel()
    finally:
        for janus in relays.values():
            await janus.stop()
    print(f"burst of {n} listeners, first request -> first audio (same run):")
    print(f"  served by the box   {summary(box_times)}")
    print(f"  sent to the relays  {summary(relay_times)}   "
          f"(j1 {where['j1']}, j2 {where['j2']}, box {where['box']})")
    print(f"relay {lost} killed under {len(moving)} listeners, kill -> audio again:")
    print(f"  {summary(failover)}   (now on: {dict(after)})")
    failed = list(box_errors.values()) + list(relay_errors.values())
    if failed:
        print(f"failed listeners: {len(box_errors)} on the box's burst, {len(relay_errors)} "
              f"on the relays' (before or after the kill); first: {failed[0]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=50)
    args = parser.parse_args()
    if os.environ.get(INNER) != "1":
        # a namespace of our own: the veth pair and its address exist only there
        sys.exit(subprocess.run(["unshare", "-n", sys.executable, __file__, *sys.argv[1:]],
                                env={**os.environ, INNER: "1"}).returncode)
    namespace()
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp), args.burst)
