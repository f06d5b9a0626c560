"""Rounds of listeners that come and leave: is what stays a leak or a high-water mark?

Issue 10 asks that RSS come back within 2 MiB of where it was once 1000
listeners have left. `bench/lean_bench.py` measures one round. This runs
several on one appliance (lean transport): each round, N listeners join in
bursts of 50 (real DTLS-SRTP peers from bench/loadgen), get audio, and all
leave. RSS and threads are read before the first round and 5 s after each
round's last DELETE. A leak grows every round. A high-water mark (heap
pages the allocators keep once they have been touched) stays where the
first round put it.

    .venv/bin/python bench/leave_rounds.py [--listeners 1000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lean_bench import (  # noqa: E402
    KEEPALIVE_S, ApplianceServer, Loadgen, add_burst, proc_sample, start_appliance, stop_process,
)


async def one_round(server: ApplianceServer, first_id: int, listeners: int, burst: int) -> int:
    times: dict[str, list[float]] = {"post_201": [], "first_audio": []}
    ident = first_id
    while len(server.sessions) < listeners:
        count = min(burst, listeners - len(server.sessions))
        errors = await add_burst(server, list(range(ident, ident + count)), times)
        ident += count
        if errors:
            raise RuntimeError(f"a burst failed: {errors[0]}")
    limiter = trio.CapacityLimiter(20)

    async def leave(key: int) -> None:
        async with limiter:
            await server.remove(key)

    async with trio.open_nursery() as nursery:
        for key in list(server.sessions):
            nursery.start_soon(leave, key)
    await trio.sleep(5)   # what the server frees in the background
    return ident


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            process, url = await start_appliance(Path(tmp), "lean", args.listeners + 10)
            loadgen = await Loadgen.start(nursery, workers=2, unprotect_every=10)
            try:
                limits = httpx.Limits(max_connections=200, max_keepalive_connections=200,
                                      keepalive_expiry=KEEPALIVE_S)
                async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
                    server = ApplianceServer("appliance (lean)", process.pid, loadgen, client)
                    await trio.sleep(2)
                    _, rss0, threads0 = proc_sample(process.pid)
                    print(f"  before: RSS {rss0 / 1024:.1f} MiB, threads {threads0}", flush=True)
                    ident = 0
                    for number in range(1, args.rounds + 1):
                        ident = await one_round(server, ident, args.listeners, args.burst)
                        _, rss, threads = proc_sample(process.pid)
                        print(f"  after round {number} ({args.listeners} came and left): RSS "
                              f"{rss / 1024:.1f} MiB ({(rss - rss0) / 1024:+.1f} against before), "
                              f"threads {threads}", flush=True)
            finally:
                await loadgen.aclose()
                await stop_process(process)
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=50)
    args = parser.parse_args()
    print(f"{args.rounds} rounds of {args.listeners} listeners joining and leaving, one "
          f"appliance (lean); load average {os.getloadavg()[0]:.1f}", flush=True)
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
