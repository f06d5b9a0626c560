"""Listeners moved to Janus relays, and a relay that dies under them (issue 20).

In a network namespace of its own (it starts itself again under
``unshare -n``, as tests/support/janus_check.py: Janus gathers no ICE
candidates on loopback), the box runs as its own process (its tone on
"main", bench/lean_bench.py's ``start_appliance``) with two real Janus
relays set in its config file (``[[relays]]``), so that the box's CPU and
each Janus's are measured apart (/proc/<pid>/stat, % of one core).

1. ``bench/loadgen`` listeners (C, one process): the box's CPU with none;
   a burst of ``--burst`` served by the box (``POST /api/whep``), its CPU
   then; the same burst sent to the relays (``relays_first`` on: ``GET
   /api/listen/where``, then Janus's API: session, attach, watch, the offer
   by long poll, the answer, start), first request -> first audio of both,
   p50/p95/max; then relayed listeners in bursts up to each of ``--levels``,
   the box's and each Janus's CPU at each, and their slopes per relayed
   listener (the box forwards once per relay per channel, whoever listens).
2. ``--failover`` ``RelayAwareListener``s (aiortc, the listen page's
   protocol: ask the box where, play a relay's mountpoint, ask again after
   1 s without a packet, leaving out the relay lost), held by ``--workers``
   processes of their own (this file with ``--worker``: listener ids in on
   stdin, every path a listener starts playing out on stdout, JSON lines).
   The relay carrying the most of them is killed (SIGKILL): for each of
   them, the time from the kill to its first packet on the other relay,
   p50/p95/max.

    .venv/bin/python bench/relay_failover.py [--burst 50] [--levels 0,100,200,300]
        [--failover 20] [--workers 2] [--window 8]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import httpx  # noqa: E402
import trio  # noqa: E402

from lean_bench import (  # noqa: E402
    TOKEN, ApplianceServer, Gate, JanusServer, Loadgen, LoadgenError, Row, Server, add_burst,
    appliance_client, leave_all, line_slope, measure_window, pct, proc_sample, start_appliance,
    stop_process,
)
from support.janus import Janus, RelayAwareListener  # noqa: E402
from support.janus_check import ADDRESS, gather_on_address, namespace, relay_status  # noqa: E402
from support.webrtc import open_aiortc_listener  # noqa: E402

INNER = "RELAY_FAILOVER_IN_NAMESPACE"
CHANNEL = "main"
RELAYS = ("j1", "j2")
JOIN_TIMEOUT_S = 90      # a burst's listeners all playing (or failed) by then
FAILOVER_TIMEOUT_S = 90


# ---- a worker process: its share of the listeners ---------------------------------

def emit(**message: object) -> None:
    print(json.dumps(message), flush=True)


async def listen(client: httpx.AsyncClient, ident: int) -> None:
    """One listener until cancelled; every path it starts playing is
    reported (``first``: the path's first packet, time.monotonic(): one
    clock for every process)."""
    listener = RelayAwareListener(client, CHANNEL, open_aiortc_listener)

    async def report_paths() -> None:
        while True:
            switched = listener.switched      # made anew at every path
            await switched.wait()
            emit(event="play", id=ident, where=listener.where,
                 first=listener.peer.first_packet_time)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report_paths)
        try:
            await listener.run()
        except Exception as error:
            emit(event="error", id=ident, message=f"{type(error).__name__}: {error}"[:200])
        finally:
            nursery.cancel_scope.cancel()


async def read_commands(send: trio.MemorySendChannel) -> None:
    """stdin's JSON lines; the channel closes at EOF (the bench is gone)."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with send, stdin:
        buffer = b""
        while chunk := await stdin.receive_some():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                send.send_nowait(json.loads(line))


async def worker(box_url: str) -> None:
    """``{"join": [ids]}`` starts listeners; ``{"leave": true}`` ends them
    all (each leaves the box or its Janus) and answers ``left``; EOF ends
    them and the worker."""
    gather_on_address()
    send, commands = trio.open_memory_channel(float("inf"))
    async with appliance_client(box_url) as client, trio.open_nursery() as nursery:
        nursery.start_soon(read_commands, send)
        emit(event="ready")
        ended = False
        while not ended:
            async with trio.open_nursery() as held:
                ended = True
                async for command in commands:
                    if "leave" in command:
                        ended = False
                        break
                    for ident in command["join"]:
                        held.start_soon(listen, client, ident)
                held.cancel_scope.cancel()
            emit(event="left")
        nursery.cancel_scope.cancel()


# ---- the bench's side of the workers ------------------------------------------------

class ListenerWorkers:
    """The worker processes; listener ``i`` lives in worker ``i % count``.
    ``paths[i]``: (where, first packet) of every path it played, in order."""

    def __init__(self) -> None:
        self.processes: list[trio.Process] = []
        self.paths: dict[int, list[tuple[str, float]]] = {}
        self.errors: dict[int, str] = {}
        self.ready = self.left = 0
        self.exited: str | None = None
        self._changed = trio.Event()

    @classmethod
    async def open(cls, nursery: trio.Nursery, count: int, box_url: str) -> ListenerWorkers:
        self = cls()
        try:
            for _ in range(count):
                process = await trio.lowlevel.open_process(
                    [sys.executable, __file__, "--worker", box_url],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                self.processes.append(process)
                nursery.start_soon(self._read, process)
            await self.wait_until(lambda: self.ready == count, 60)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.aclose()
            raise
        return self

    async def _read(self, process: trio.Process) -> None:
        buffer = b""
        while chunk := await process.stdout.receive_some(1 << 16):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._dispatch(json.loads(line))
        await process.wait()
        if self.exited is None:
            self.exited = f"a listener worker exited with status {process.returncode}"
        self._notify()

    def _dispatch(self, message: dict) -> None:
        event = message["event"]
        if event == "play":
            self.paths.setdefault(message["id"], []).append((message["where"], message["first"]))
        elif event == "error":
            self.errors[message["id"]] = message["message"]
        elif event == "left":
            self.left += 1
        elif event == "ready":
            self.ready += 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        with trio.fail_after(timeout):
            while not done():
                if self.exited:
                    raise RuntimeError(self.exited)
                await self._changed.wait()

    async def _send(self, worker: int, message: dict) -> None:
        await self.processes[worker].stdin.send_all(json.dumps(message).encode() + b"\n")

    async def join(self, idents: list[int]) -> None:
        """Start these listeners at once; back when each plays or failed."""
        for worker in range(len(self.processes)):
            share = [i for i in idents if i % len(self.processes) == worker]
            if share:
                await self._send(worker, {"join": share})
        await self.wait_until(lambda: all(i in self.paths or i in self.errors for i in idents),
                              JOIN_TIMEOUT_S)

    async def leave(self) -> None:
        self.left = 0
        for worker in range(len(self.processes)):
            await self._send(worker, {"leave": True})
        await self.wait_until(lambda: self.left == len(self.processes), 60)

    def where(self, ident: int) -> str:
        return self.paths[ident][-1][0] if ident in self.paths else "failed"

    async def aclose(self) -> None:
        """EOF on stdin ends a worker (its listeners leave); killed if it
        has not ended within 30 s."""
        for process in self.processes:
            if process.stdin is not None:
                await process.stdin.aclose()
        for process in self.processes:
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


# ---- measuring ----------------------------------------------------------------

@dataclass
class Box:
    """The box's process and an admin client (relay_status asks ``box.client``)."""
    process: trio.Process
    client: httpx.AsyncClient


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    ms = [v * 1000 for v in values]
    return (f"p50 {pct(ms, 50):6.0f} ms  p95 {pct(ms, 95):6.0f} ms  "
            f"max {max(ms):6.0f} ms  (n={len(ms)})")


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


async def wait_box_idle(box: Box) -> None:
    with trio.fail_after(30):
        while (await box.client.get("/api/status")).json()["listeners"]["total"]:
            await trio.sleep(0.1)


class RelayedListeners(Server):
    """Loadgen listeners sent where the box says (``GET /api/listen/where``),
    each then through its relay's Janus API (lean_bench's ``JanusServer``,
    one per relay). ``pid`` is the box's: ``measure_window`` measures it."""

    def __init__(self, *args: Any, relays: dict[str, JanusServer], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relays = relays

    async def add(self, ident: int, gate: Gate) -> tuple[float, float]:
        await gate.wait()
        t0 = time.monotonic()
        found = (await self.client.get(f"/api/listen/where/{CHANNEL}")).json()
        if "janus" not in found:
            raise LoadgenError(f"not sent to a relay: {found}")
        relay = self.relays[found["janus"]["relay"]]
        relay.mountpoint = found["janus"]["mountpoint"]
        _, t_offer = await relay.add(ident, Gate(1))    # past the burst's gate already
        self.sessions[ident] = found["janus"]["relay"]
        return t0, t_offer

    async def remove(self, ident: int) -> None:
        relay = self.sessions.pop(ident, None)
        if relay is None:
            await self.loadgen.close(ident)
        else:
            await self.relays[relay].remove(ident)


@dataclass
class Level:
    n: int
    row: Row                  # the box's CPU (row.cpu_pct), the loadgen's, losses
    relays: dict[str, float]  # each Janus's CPU, % of one core
    load: float


async def run(tmp: Path, args: argparse.Namespace) -> None:
    levels = sorted({0, *args.levels})
    relays = {name: Janus(tmp / name, ice="d0") for name in RELAYS}
    box: Box | None = None
    loadgen: Loadgen | None = None
    workers: ListenerWorkers | None = None
    ids = iter(range(1_000_000))
    errors: list[str] = []
    print(f"load average before: {load()}", flush=True)

    async def window(server: Server, n: int) -> Level:
        await trio.sleep(args.settle)
        before, t0 = {name: proc_sample(j.process.pid)[0] for name, j in relays.items()}, \
            time.monotonic()
        row = await measure_window(server, n, args.window)
        after, t1 = {name: proc_sample(j.process.pid)[0] for name, j in relays.items()}, \
            time.monotonic()
        level = Level(n, row, {name: 100 * (after[name] - before[name]) / (t1 - t0)
                               for name in relays}, os.getloadavg()[0])
        print(f"  {n:4d} listeners: box {row.cpu_pct:5.2f} %, "
              + ", ".join(f"{name} {cpu:5.2f} %" for name, cpu in level.relays.items())
              + f", loadgen {row.loadgen_cpu_pct:5.1f} %, lost {row.lost}/"
              f"{row.packets + row.lost}, load {level.load:.1f}", flush=True)
        return level

    async def burst(server: Server, count: int, times: dict[str, list[float]]) -> None:
        errors.extend(await add_burst(server, [next(ids) for _ in range(count)], times))

    async with trio.open_nursery() as nursery, AsyncExitStack() as clients:
        try:
            for janus in relays.values():
                await janus.start()
            # the relays come from the box's config file, as at a venue
            tables = "".join(f'[[relays]]\nid = "{name}"\nurl = "{janus.url}"\n'
                             f'channels = ["{CHANNEL}"]\n' for name, janus in relays.items())
            (tmp / "box").mkdir()
            process, url = await start_appliance(
                tmp / "box", None, max(levels) + args.burst + 100, ice_address=ADDRESS,
                more_tables=tables)
            client = await clients.enter_async_context(appliance_client(url))
            client.headers["Authorization"] = f"Bearer {TOKEN}"
            box = Box(process, client)
            for name in relays:
                await relay_status(box, name, lambda s: s["state"] == "up")
            loadgen = await Loadgen.start(nursery, workers=2, address=ADDRESS)

            # 1. the box's CPU with none, then serving a burst itself
            direct = ApplianceServer("box", process.pid, loadgen, client)
            print("no listeners (the box forwards to both relays):", flush=True)
            rows = [await window(direct, 0)]
            box_times: dict[str, list[float]] = {"post_201": [], "first_audio": []}
            await burst(direct, args.burst, box_times)
            print(f"{args.burst} listeners served by the box itself:", flush=True)
            served = await window(direct, args.burst)
            errors.extend(await leave_all(direct))
            await wait_box_idle(box)

            # 2. the same burst sent to the relays, then more relayed listeners
            r = await client.patch(f"/api/sinks/{CHANNEL}", json={"relays_first": True})
            assert r.status_code == 200, r.text
            print("relayed listeners:", flush=True)
            relay_times: dict[str, list[float]] = {"post_201": [], "first_audio": []}
            async with trio.open_nursery() as polls:     # the Janus long polls
                apis = {name: JanusServer(
                    name, janus.process.pid, loadgen,
                    await clients.enter_async_context(
                        appliance_client(janus.url.removesuffix("/janus"))),
                    nursery=polls) for name, janus in relays.items()}
                relayed = RelayedListeners("relays", process.pid, loadgen, client, relays=apis)
                for n in levels[1:]:
                    while len(relayed.sessions) < n:
                        times = relay_times if not relayed.sessions else \
                            {"post_201": [], "first_audio": []}     # only the first, from none
                        await burst(relayed, min(args.burst, n - len(relayed.sessions)), times)
                    rows.append(await window(relayed, n))
                placed = Counter(relayed.sessions.values())
                errors.extend(await leave_all(relayed))
                polls.cancel_scope.cancel()
            for name in relays:
                await relay_status(box, name, lambda s: s["viewers"] == 0)

            # 3. listeners that follow the listen page's protocol; their relay dies
            workers = await ListenerWorkers.open(nursery, args.workers, url)
            moved = [next(ids) for _ in range(args.failover)]
            await workers.join(moved)
            where = Counter(workers.where(i) for i in moved)
            lost = max(relays, key=lambda name: where[name])
            moving = [i for i in moved if workers.where(i) == lost]
            print(f"{args.failover} aiortc listeners {dict(where)}; killing {lost}, "
                  f"load {load()}", flush=True)
            killed = time.monotonic()
            await relays[lost].stop()

            def back(i: int) -> bool:
                return workers.paths[i][-1][1] > killed

            with trio.move_on_after(FAILOVER_TIMEOUT_S):
                await workers.wait_until(
                    lambda: all(i in workers.errors or back(i) for i in moving), 1e9)
            failover = [workers.paths[i][-1][1] - killed for i in moving if back(i)]
            after = Counter(workers.where(i) for i in moving if back(i))
        finally:
            with trio.CancelScope(shield=True):
                if workers is not None:
                    await workers.aclose()
                if loadgen is not None:
                    await loadgen.aclose()
                if box is not None:
                    await stop_process(box.process)
                for janus in relays.values():
                    await janus.stop()
        nursery.cancel_scope.cancel()

    print(f"\nburst of {args.burst} listeners (bench/loadgen), first request -> first audio, "
          f"same run:")
    print(f"  served by the box   {summary(box_times['first_audio'])}")
    print(f"  sent to the relays  {summary(relay_times['first_audio'])}")
    print("\n| relayed listeners | box | " + " | ".join(relays)
          + " | loadgen | lost / packets | load |")
    print("| --- | --- | " + " | ".join("---" for _ in relays) + " | --- | --- | --- |")
    for level in rows:
        print(f"| {level.n} | {level.row.cpu_pct:.2f} % | "
              + " | ".join(f"{cpu:.2f} %" for cpu in level.relays.values())
              + f" | {level.row.loadgen_cpu_pct:.1f} % | {level.row.lost} / "
              f"{level.row.packets + level.row.lost} | {level.load:.1f} |")
    box_slope = line_slope([(level.n, level.row.cpu_pct) for level in rows])
    relays_slope = line_slope([(level.n, sum(level.relays.values())) for level in rows])
    print(f"slope per relayed listener: the box {box_slope:+.4f} %, the relays together "
          f"{relays_slope:+.4f} % (of one core); placed {dict(placed)}")
    print(f"the box serving {args.burst} itself: {served.row.cpu_pct:.2f} % "
          f"({(served.row.cpu_pct - rows[0].row.cpu_pct) / args.burst:+.4f} % per listener)")
    print(f"\nrelay {lost} killed under {len(moving)} of {args.failover} aiortc listeners "
          f"({args.workers} processes), kill -> audio again:")
    print(f"  {summary(failover)}   (now on: {dict(after)})")
    failed = errors + list(workers.errors.values())
    if failed:
        print(f"failed listeners: {len(failed)}; first: {failed[0]}")


async def main(tmp: Path, args: argparse.Namespace) -> bool:
    """``run``; at SIGTERM cancelled, its cleanup done, and True."""
    terminated = False
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def on_sigterm() -> None:
                nonlocal terminated
                async for _ in signals:
                    terminated = True
                    nursery.cancel_scope.cancel()
            nursery.start_soon(on_sigterm)
            await run(tmp, args)
            nursery.cancel_scope.cancel()
    return terminated


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                        default=[0, 100, 200, 300])   # what a shared 2-core machine holds
    parser.add_argument("--failover", type=int, default=20,
                        help="aiortc listeners on the relays when one is killed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--worker", metavar="BOX_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        trio.run(worker, args.worker)
    elif os.environ.get(INNER) != "1":
        # a namespace of our own: the veth pair and its address exist only
        # there, and it is gone with the last of its processes
        inner = subprocess.Popen(["unshare", "-n", sys.executable, __file__, *sys.argv[1:]],
                                 env={**os.environ, INNER: "1"})
        signal.signal(signal.SIGTERM, lambda *_: inner.send_signal(signal.SIGTERM))
        try:
            sys.exit(inner.wait())
        except KeyboardInterrupt:      # the inner bench had it too: let it clean up
            sys.exit(inner.wait())
    else:
        namespace()
        with tempfile.TemporaryDirectory() as tmp:
            terminated = trio.run(main, Path(tmp), args)
        if terminated:
            sys.exit(128 + signal.SIGTERM)
