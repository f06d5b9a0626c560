"""What a network source adds to the latency, beside the HAT path, in the
same run: clicks into the box, heard by a real WebRTC listener (aiortc).

    .venv/bin/python bench/network_latency.py [--seconds 20] [--latency-ms 20]

- HAT path: the engine's click source (what a HAT's capture feeds the
  mixer; the click times are the engine's own) -> Opus channel -> listener.
- Network path: Debian's gst-launch-1.0 sending ticks (audiotestsrc
  wave=ticks, a click every 500 ms) as AES67 does (L24, 48 kHz, 1 ms
  packets) -> a loopback proxy that stamps the packet holding each tick's
  first sample (when it reached the box) -> the box's RTP source (its jitter
  buffer: --latency-ms) -> Opus channel -> listener.

Each listener stamps every decoded frame (time.monotonic, both paths the
same way); a click is the first sample above -30 dBFS after 100 ms of
quiet. Printed: each path's latency (p50, p95) and the difference, which
issue 19 wants within the jitter buffer + 5 ms.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import time
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import trio  # noqa: E402

from appliance import EngineSettings, RouteSpec, SinkSpec, SourceSpec, open_engine  # noqa: E402
from support.scream import free_udp_port  # noqa: E402
from support.webrtc import open_aiortc_listener  # noqa: E402
from test_engine import connect  # noqa: E402

RATE = 48000
THRESHOLD = 10 ** (-30 / 20)
QUIET = int(0.1 * RATE)


class Onsets:
    """Click onsets in a listener's decoded frames, on the monotonic clock."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.quiet = 0

    def frame(self, arrived: float, samples: np.ndarray) -> None:
        loud = np.flatnonzero(np.abs(samples) > THRESHOLD)
        n = len(samples)
        if len(loud) and self.quiet + loud[0] >= QUIET:
            self.times.append(arrived - (n - loud[0]) / RATE)
        self.quiet = n - 1 - loud[-1] if len(loud) else self.quiet + n


async def stamping_proxy(listen: int, to: int, sent: list[float], *,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Forwards RTP (L24 stereo) and stamps each tick's onset: when the
    packet with its first loud sample arrived, less the samples after it."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", listen))
    task_status.started()
    quiet = QUIET
    with sock, out:
        while True:
            datagram = await sock.recv(4096)
            arrived = time.monotonic()
            await out.sendto(datagram, ("127.0.0.1", to))
            pcm = np.frombuffer(datagram[12:], dtype=np.uint8).reshape(-1, 3)
            values = (pcm[:, 0].astype(np.int32) << 16 | pcm[:, 1].astype(np.int32) << 8 |
                      pcm[:, 2]).astype(np.int32)
            values = np.where(values >= 1 << 23, values - (1 << 24), values)[0::2] / (1 << 23)
            loud = np.flatnonzero(np.abs(values) > THRESHOLD)
            n = len(values)
            if len(loud) and quiet + loud[0] >= QUIET:
                sent.append(arrived - (n - 1 - loud[0]) / RATE)
            quiet = n - 1 - loud[-1] if len(loud) else quiet + n


def latencies(emitted: list[float], heard: list[float]) -> list[float]:
    """Each heard click against the last emission before it (within 300 ms)."""
    out = []
    for t in heard:
        before = [e for e in emitted if 0 <= t - e < 0.3]
        if before:
            out.append((t - before[-1]) * 1000)
    return out


def show(name: str, values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    p50 = statistics.median(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    print(f"{name:8s} clicks {len(values):3d}   p50 {p50:6.1f} ms   p95 {p95:6.1f} ms")
    return p50, p95


async def main(args: argparse.Namespace) -> None:
    port, proxy = free_udp_port(), free_udp_port()
    settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1, transport="lean")
    async with open_engine(settings) as engine:
        await engine.add_source("hat", SourceSpec(kind="clicks", click_interval_ms=500,
                                                  tone_dbfs=-6.0))
        await engine.add_source("net", SourceSpec(
            kind="rtp", address="127.0.0.1", port=port, allow_from=("127.0.0.1",),
            latency_ms=args.latency_ms, encoding="L24", payload_type=96))
        for path in ("hat", "net"):
            await engine.add_sink(path, SinkSpec(kind="opus"))
            await engine.add_route(path, RouteSpec(path, path))
        command = ["gst-launch-1.0", "-q", "audiotestsrc", "wave=ticks", "freq=2000",
                   "volume=0.5", "tick-interval=500000000", "is-live=true", "!",
                   "audio/x-raw,format=S24BE,rate=48000,channels=2", "!", "rtpL24pay", "pt=96",
                   "min-ptime=1000000", "max-ptime=1000000", "!", "udpsink", "host=127.0.0.1",
                   f"port={proxy}", "bind-address=127.0.0.1"]
        sent: list[float] = []
        heard = {"hat": Onsets(), "net": Onsets()}
        async with trio.open_nursery() as nursery, \
                open_aiortc_listener() as hat_peer, open_aiortc_listener() as net_peer:
            await nursery.start(stamping_proxy, proxy, port, sent)
            sender = await nursery.start(partial(trio.run_process, command, check=False))
            listeners = []
            for path, peer in (("hat", hat_peer), ("net", net_peer)):
                listeners.append(await connect(engine, peer, path))
                peer.on_frame = heard[path].frame
            await trio.sleep(args.seconds)
            for peer in (hat_peer, net_peer):
                peer.on_frame = None
            sender.kill()
            for listener in listeners:
                await listener.aclose()
            nursery.cancel_scope.cancel()
        clicks = engine.source_click_times("hat")
        stats = engine.net_source_stats("net")
    # steady after the first two seconds (issue 18: the listener's own jitter buffer)
    hat = latencies(clicks, heard["hat"].times[4:])
    net = latencies(sent, heard["net"].times[4:])
    print(f"network source: buffer {args.latency_ms} ms (held {stats.buffered_ms} ms), "
          f"lost {stats.lost}, late {stats.late}, resyncs {stats.resyncs}")
    hat50, hat95 = show("HAT", hat)
    net50, net95 = show("network", net)
    print(f"added    p50 {net50 - hat50:6.1f} ms   p95 {net95 - hat95:6.1f} ms   "
          f"(issue 19: at most {args.latency_ms} + 5 = {args.latency_ms + 5} ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=int, default=20)
    trio.run(main, parser.parse_args())
