"""What AES67 streams cost the box: the appliance's CPU with --sources RTP
sources (L24, 48 kHz, stereo, 1 ms packets: AES67's own), each sent by
Debian's gst-launch-1.0 on loopback and routed to a channel of its own,
against the same number of tone sources routed the same way (the mixer's
share without a network). Printed: percent of a core for the process and by
thread, per source, and what the sources counted (lost, late, resyncs:
all should stay 0).

    .venv/bin/python bench/network_sources.py [--sources 8] [--seconds 10]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import trio  # noqa: E402

import lean_bench  # noqa: E402
from idle_sessions import cpu_over, show  # noqa: E402
from tests.support.rtp import gstreamer_sender  # noqa: E402
from tests.support.scream import free_udp_port  # noqa: E402


async def add_channels(client: httpx.AsyncClient, sources: list[dict]) -> None:
    for n, source in enumerate(sources):
        for path, body in (("/api/sources", source),
                           ("/api/sinks", {"id": f"ch{n}", "kind": "opus"}),
                           ("/api/routes", {"id": f"r{n}", "source_id": source["id"],
                                            "sink_id": f"ch{n}"})):
            r = await client.post(path, json=body)
            assert r.status_code == 201, (path, r.status_code, r.text)


async def measure(kind: str, count: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        process, url = await lean_bench.start_appliance(Path(tmp), None, 10,
                                                        server_settings="sap_port = 0\n")
        headers = {"Authorization": f"Bearer {lean_bench.TOKEN}"}
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client, \
                    trio.open_nursery() as nursery:
                if kind == "rtp":
                    ports = [free_udp_port() for _ in range(count)]
                    await add_channels(client, [
                        {"id": f"s{n}", "kind": "rtp", "address": "127.0.0.1", "port": port,
                         "allow_from": ["127.0.0.1"]} for n, port in enumerate(ports)])
                    for port in ports:
                        nursery.start_soon(partial(trio.run_process, check=False),
                                           gstreamer_sender("127.0.0.1", port))
                    with trio.fail_after(20):   # every stream arrives and is read
                        while not all(s["buffered_ms"] is not None for s in (
                                await client.get("/api/status")).json()["network_sources"].values()):
                            await trio.sleep(0.2)
                    before = (await client.get("/api/status")).json()["network_sources"]
                else:
                    await add_channels(client, [{"id": f"s{n}", "kind": "tone",
                                                 "tone_hz": 440 + n} for n in range(count)])
                total, threads = await cpu_over(process.pid, seconds)
                show(f"{count} {kind} sources", total, threads)
                print(f"{'':34} {total / count:6.2f} % of a core per source; "
                      f"receivers {threads.get('ae-netsrc', 0.0) / count:.2f} % each")
                if kind == "rtp":
                    after = (await client.get("/api/status")).json()["network_sources"]
                    for key in ("lost", "late", "resyncs", "malformed"):
                        print(f"{'':34} {key} during the run: "
                              f"{sum(after[s][key] - before[s][key] for s in after)}")
                    print(f"{'':34} buffered ms: "
                          + ", ".join(f"{after[s]['buffered_ms']:.1f}" for s in sorted(after)))
                nursery.cancel_scope.cancel()
        finally:
            await lean_bench.stop_process(process)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    await measure("tone", args.sources, args.seconds)
    await measure("rtp", args.sources, args.seconds)


if __name__ == "__main__":
    trio.run(main)
