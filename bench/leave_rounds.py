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
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lean_bench import (  # noqa: E402
    ApplianceServer, add_burst, appliance_client, leave_all, proc_sample, running_appliance,
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
    errors = await leave_all(server)
    if errors:
        raise RuntimeError(f"a listener could not leave: {errors[0]}")
    await trio.sleep(5)   # what the server frees in the background
    return ident


async def main_async(args: argparse.Namespace) -> None:
    async with running_appliance("lean", args.listeners + 10,
                                 unprotect_every=10) as (process, url, loadgen):
        async with appliance_client(url) as client:
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
