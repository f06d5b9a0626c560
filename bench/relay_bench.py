"""Relays: what box A pays to have box B serve its listeners (issue 20).

Box A (the appliance in its own process, its tone on "main") publishes
"main" over WHIP into box B's whip source, routed to B's "main" (B's own
tone route removed): B is the relay. ``bench/loadgen`` then holds N
listeners on B, in bursts of 50, while A's and B's CPU are measured over the
same windows. In the same run, the same bursts on A itself (the box serving
its listeners) give the per-listener cost and POST -> first audio there.

    .venv/bin/python bench/relay_bench.py [--levels 0,100,250,500] [--window 8]

Printed: both boxes' CPU per level and its slope per listener (A's slope
per relayed listener against B's per served listener and A's per direct
listener), and POST -> first audio (p50, p95) of listeners sent to the
relay against the same listeners served by A.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import trio  # noqa: E402

from lean_bench import (  # noqa: E402
    TOKEN, ApplianceServer, Loadgen, add_burst, appliance_client, leave_all, line_slope,
    measure_window, pct, proc_sample, start_appliance, stop_process,
)

ADMIN = {"Authorization": f"Bearer {TOKEN}"}


async def levels_on(server: ApplianceServer, levels: list[int], window: float,
                    also: int | None) -> tuple[list[tuple[int, float, float]], dict]:
    """N listeners on ``server`` level by level; CPU of the server and of
    process ``also`` over each window."""
    rows, times, next_id = [], {"post_201": [], "first_audio": []}, 0
    for n in levels:
        while len(server.sessions) < n:
            count = min(50, n - len(server.sessions))
            errors = await add_burst(server, list(range(next_id, next_id + count)), times)
            next_id += count
            if errors:
                raise SystemExit(f"{server.name}: {errors[0]}")
        await trio.sleep(2)
        a0 = proc_sample(also)[0] if also else 0.0
        row = await measure_window(server, n, window)
        a1 = proc_sample(also)[0] if also else 0.0
        other = 100 * (a1 - a0) / window if also else float("nan")
        rows.append((n, row.cpu_pct, other))
        print(f"  {server.name}: N={n:4d}  its CPU {row.cpu_pct:6.2f} %  the other box's "
              f"{other:6.2f} %  lost {row.lost}/{row.packets + row.lost}", flush=True)
    await leave_all(server)
    return rows, times


async def main_async(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        a_dir, b_dir = Path(tmp) / "a", Path(tmp) / "b"
        a_dir.mkdir()
        b_dir.mkdir()
        async with trio.open_nursery() as nursery:
            a, a_url = await start_appliance(a_dir, "lean", max(levels) + 100)
            b, b_url = await start_appliance(b_dir, "lean", max(levels) + 100)
            loadgen = await Loadgen.start(nursery, workers=2)
            try:
                async with appliance_client(b_url) as b_client, \
                        appliance_client(a_url) as a_client:
                    r = await b_client.post("/api/sources", headers=ADMIN,
                                            json={"id": "from_a", "kind": "whip"})
                    token = r.json()["publish_token"]
                    await b_client.delete("/api/routes/tone-main", headers=ADMIN)
                    await b_client.post("/api/routes", headers=ADMIN, json={
                        "id": "from_a-main", "source_id": "from_a", "sink_id": "main"})
                    r = await a_client.post("/api/publications", headers=ADMIN, json={
                        "id": "to_b", "sink_id": "main", "url": f"{b_url}/api/whip/from_a",
                        "token": token})
                    assert r.status_code == 201, r.text
                    with trio.fail_after(20):
                        while (await a_client.get("/api/publications", headers=ADMIN)
                               ).json()[0]["state"] != "live":
                            await trio.sleep(0.1)
                    print("relayed: listeners on box B, A publishing to it")
                    relay = ApplianceServer("B (relay)", b.pid, loadgen, b_client)
                    relayed, relay_times = await levels_on(relay, levels, args.window, a.pid)
                    print("direct: the same listeners on box A")
                    direct = ApplianceServer("A (direct)", a.pid, loadgen, a_client)
                    served, direct_times = await levels_on(direct, levels, args.window, None)
            finally:
                await loadgen.aclose()
                await stop_process(a)
                await stop_process(b)
            nursery.cancel_scope.cancel()
    print("\n| listeners | A's CPU, listeners on B | B's CPU | A's CPU, listeners on A |")
    print("| --- | --- | --- | --- |")
    for (n, b_cpu, a_cpu), (_, a_direct, _) in zip(relayed, served, strict=True):
        print(f"| {n} | {a_cpu:.2f} % | {b_cpu:.2f} % | {a_direct:.2f} % |")
    a_relayed = line_slope([(n, a) for n, _, a in relayed])
    b_relaying = line_slope([(n, b) for n, b, _ in relayed])
    a_serving = line_slope([(n, a) for n, a, _ in served])
    print(f"slope per listener: A while B relays {a_relayed:+.4f} %/listener; "
          f"B {b_relaying:+.4f}; A serving them {a_serving:+.4f}")
    for name, t in (("relay B", relay_times), ("box A", direct_times)):
        first = t["first_audio"]
        print(f"POST -> first audio on {name}: p50 {1000 * pct(first, 50):.0f} ms, "
              f"p95 {1000 * pct(first, 95):.0f} ms ({len(first)} listeners)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="0,100,250,500")
    parser.add_argument("--window", type=float, default=8.0)
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
