"""Live-event streams and idle connections from many addresses against the
watchdog's view of the box: how long GET /healthz takes meanwhile.

    .venv/bin/python bench/stream_flood.py [--streams 8000] [--addresses 2000] [--seconds 20]

The real appliance in its own process (bench/lean_bench.start_appliance, a
tone on "main") on loopback. The flood opens --streams connections from
--addresses loopback addresses (127.0.5.x ...), each sending GET
/api/listen/events and never reading what comes back, as fast as the box
takes them, and keeps them open; meanwhile /healthz is asked twice a second
from 127.0.0.1 (as the systemd watchdog does). Printed: streams answered 200
/ refused (429, 503) / closed unanswered, /healthz latency (median, max) and
the appliance's open fds at the end. Before the bounds (issue 23): 8,000
such streams took /healthz to 17-35 s and the watchdog gap to 121 s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import trio  # noqa: E402

import lean_bench  # noqa: E402


def address(i: int) -> str:
    return f"127.{5 + i // 62500}.{(i // 250) % 250}.{1 + i % 250}"


async def open_stream(host: str, port: int, source: str, held: list, counts: dict) -> None:
    try:
        stream = await trio.open_tcp_stream(host, port, local_address=source)
    except OSError:
        counts["connect_failed"] += 1
        return
    held.append(stream)
    try:
        await stream.send_all(f"GET /api/listen/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        with trio.move_on_after(5):
            head = await stream.receive_some(64)
            if not head:
                counts["closed"] += 1
                return
            code = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "?"
            counts[code] = counts.get(code, 0) + 1
            return
        counts["no_answer"] += 1
    except (trio.BrokenResourceError, OSError):
        counts["closed"] += 1


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=8000)
    parser.add_argument("--addresses", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = await lean_bench.start_appliance(Path(tmp), None, 100)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        held: list[trio.SocketStream] = []
        counts = {"closed": 0, "no_answer": 0, "connect_failed": 0}
        latencies: list[float] = []
        try:
            async with trio.open_nursery() as nursery:
                async def health() -> None:
                    from appliance.web.health import answers
                    end = trio.current_time() + args.seconds
                    while trio.current_time() < end:
                        started = time.monotonic()
                        with trio.move_on_after(60):
                            await answers(url)
                        latencies.append(time.monotonic() - started)
                        await trio.sleep(0.5)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(health)
                limit = trio.CapacityLimiter(200)

                async def one(i: int) -> None:
                    async with limit:
                        await open_stream(host, int(port), address(i % args.addresses), held,
                                          counts)
                for i in range(args.streams):
                    nursery.start_soon(one, i)
            fds = len(os.listdir(f"/proc/{process.pid}/fd"))
        finally:
            for stream in held:
                stream.socket.close()
            await lean_bench.stop_process(process)
    result = {"streams": args.streams, "addresses": args.addresses, "answers": counts,
              "healthz_median_s": round(statistics.median(latencies), 3),
              "healthz_max_s": round(max(latencies), 3), "healthz_asked": len(latencies),
              "appliance_fds_at_end": fds}
    print(json.dumps(result) if args.json else
          "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    trio.run(main)
