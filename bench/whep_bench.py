"""WHEP service benchmark: POST-to-201 and POST-to-first-audio-packet times.

Starts ``appliance run`` as its own process (loopback only, ICE on
127.0.0.1, a throwaway state directory), waits for its READY=1 on a notify
socket, then runs real aiortc listeners against it:

- sequential: one listener at a time (offer, POST, answer, connect, first
  RTP packet, DELETE);
- concurrent: bursts of listeners that POST at the same moment.

The offer is made before the clock starts (it is the client's own work);
the clock starts right before the POST is sent. Prints p50/p95/max in ms.

    .venv/bin/python bench/whep_bench.py [--sequential 40] [--burst 10] [--bursts 3]

Targets (loopback): POST-to-201 p95 <= 100 ms, first audio p95 <= 250 ms.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.webrtc import open_aiortc_listener  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(name: str, values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (f"{name:<28} n={len(ms):<4} p50={statistics.median(ms):7.1f} ms  "
            f"p95={pct(ms, 95):7.1f} ms  max={max(ms):7.1f} ms")


async def one_listener(client: httpx.AsyncClient, results: dict[str, list[float]],
                       start_gate: trio.Event | None = None) -> None:
    async with open_aiortc_listener() as peer:
        offer = await peer.create_offer()
        if start_gate is not None:
            await start_gate.wait()
        t0 = time.monotonic()
        r = await client.post("/api/whep/main", content=offer,
                              headers={"Content-Type": "application/sdp"})
        t201 = time.monotonic()
        if r.status_code != 201:
            raise RuntimeError(f"POST gave {r.status_code}: {r.text}")
        await peer.accept_answer(r.text)
        first = await peer.wait_first_packet(timeout=10)
        results["post_to_201"].append(t201 - t0)
        results["post_to_first_audio"].append(first - t0)
        await client.delete(r.headers["Location"])


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(f'state_dir = "{tmp}/state"\n[server]\npost_rate_per_s = 1000.0\n'
                          f'post_burst = 1000\n[engine]\nice_addresses = ["127.0.0.1"]\n')
        notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await notify.bind(f"{tmp}/notify")
        env = {**os.environ, "NOTIFY_SOCKET": f"{tmp}/notify", "PYTHONPATH": str(ROOT)}
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "appliance.cli", "run", "--config", str(config),
             "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"],
            env=env, cwd=str(ROOT))
        try:
            with trio.fail_after(30):
                ready = (await notify.recv(4096)).decode()
            url = re.search(r"http://127\.0\.0\.1:\d+", ready).group(0)
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                # warm-up (imports, first pipeline)
                await one_listener(client, {"post_to_201": [], "post_to_first_audio": []})
                seq: dict[str, list[float]] = {"post_to_201": [], "post_to_first_audio": []}
                for _ in range(args.sequential):
                    await one_listener(client, seq)
                conc: dict[str, list[float]] = {"post_to_201": [], "post_to_first_audio": []}
                for _ in range(args.bursts):
                    gate = trio.Event()
                    async with trio.open_nursery() as nursery:
                        for _ in range(args.burst):
                            nursery.start_soon(one_listener, client, conc, gate)
                        await trio.sleep(1.0)  # every peer has its offer ready
                        gate.set()
            print(f"WHEP benchmark, {os.cpu_count()} cores, loopback, aiortc listeners, "
                  f"server `appliance run` in its own process")
            print(f"sequential ({args.sequential} listeners, one at a time):")
            print("  " + summary("POST -> 201", seq["post_to_201"]))
            print("  " + summary("POST -> first audio packet", seq["post_to_first_audio"]))
            print(f"concurrent ({args.bursts} bursts of {args.burst} simultaneous POSTs):")
            print("  " + summary("POST -> 201", conc["post_to_201"]))
            print("  " + summary("POST -> first audio packet", conc["post_to_first_audio"]))
        finally:
            process.send_signal(2)
            with trio.move_on_after(20):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            notify.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequential", type=int, default=40)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=3)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
