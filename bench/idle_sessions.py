"""What sessions that never connect cost the box: the appliance's CPU with
none, then with --sessions WHEP sessions that got their answer and never
sent a packet (a stranger's POSTs), by thread.

    .venv/bin/python bench/idle_sessions.py [--sessions 100] [--seconds 10]

The real appliance in its own process (bench/lean_bench.start_appliance, a
tone on "main"), sessions kept for the whole run (connect_timeout_s 300).
They are spread over what makes a sink of its own: listening to a source
(a temporary sink each), to a source in mono, to a route with clear speech,
and the channel with clear speech or a balance (one shared variant each).
Issue 23 measured 98.6 % of a core for 100 of them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import trio  # noqa: E402

import lean_bench  # noqa: E402
from tests.support.webrtc import synthetic_offer  # noqa: E402

TARGETS = ("/api/whep/source/tone", "/api/whep/source/tone?mono=1",
           "/api/whep/route/tone-main?clear=1&mono=1", "/api/whep/main?clear=1",
           "/api/whep/main?balance=-25")


async def cpu_over(pid: int, seconds: float) -> tuple[float, dict[str, float]]:
    """Percent of a core for the process, and by thread name, over seconds."""
    cpu0, threads0, t0 = lean_bench.proc_sample(pid)[0], lean_bench.thread_cpu(pid), time.monotonic()
    await trio.sleep(seconds)
    cpu1, threads1, t1 = lean_bench.proc_sample(pid)[0], lean_bench.thread_cpu(pid), time.monotonic()
    share = {name: 100 * (threads1[name] - threads0.get(name, 0.0)) / (t1 - t0)
             for name in threads1}
    return 100 * (cpu1 - cpu0) / (t1 - t0), share


def show(label: str, total: float, threads: dict[str, float]) -> None:
    top = sorted(threads.items(), key=lambda item: -item[1])[:4]
    print(f"{label:<34} {total:6.1f} % of a core   "
          + ", ".join(f"{name} {share:.1f}" for name, share in top))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = await lean_bench.start_appliance(
            Path(tmp), None, args.sessions + 50,
            server_settings="connect_timeout_s = 300\nsession_timeout_s = 300\n")
        try:
            show("no sessions", *await cpu_over(process.pid, args.seconds))
            headers = {"Authorization": f"Bearer {lean_bench.TOKEN}",
                       "Content-Type": "application/sdp"}
            async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client:
                for i in range(args.sessions):
                    answer = await client.post(TARGETS[i % len(TARGETS)],
                                               content=synthetic_offer())
                    assert answer.status_code == 201, (answer.status_code, answer.text)
                status = (await client.get("/api/status")).json()
                print(f"{args.sessions} sessions answered; the engine holds "
                      f"{status['engine']['sinks']} sinks")
                show(f"{args.sessions} never connected", *await cpu_over(process.pid, args.seconds))
        finally:
            await lean_bench.stop_process(process)


if __name__ == "__main__":
    trio.run(main)
