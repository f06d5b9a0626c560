"""Memory per lean listener in the engine alone (no web stack).

Opens an engine in this process with the lean transport and a tone sink,
connects N listeners from ``bench/loadgen`` (real ICE, DTLS, SRTP, an SRTCP
receiver report a second from each), lets them run a few seconds (so every
listener has received RTP and sent RTCP: libsrtp's per-SSRC state exists),
and prints the growth of glibc's heap in use (mallinfo2 uordblks + hblkhd)
and of RSS from N = 0, per listener.

    .venv/bin/python bench/lean_memory.py [--listeners 500] [--settle 4]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from appliance import (  # noqa: E402
    AnswerReady, EngineSettings, ListenerState, ListenerStateChanged, RouteSpec, SinkSpec,
    SourceSpec, open_engine,
)
from lean_bench import Loadgen, proc_sample  # noqa: E402


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = Mallinfo2


def heap_and_rss() -> tuple[int, int]:
    """(bytes of heap in use, bytes of RSS) of this process."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd, proc_sample(os.getpid())[1] * 1024


async def connect(engine, loadgen: Loadgen, ident: int, up: list) -> None:
    listener = engine.start_listener("main", await loadgen.offer(ident))
    async for ev in listener.events:
        if isinstance(ev, AnswerReady):
            await loadgen.answer(ident, ev.sdp)
        elif isinstance(ev, ListenerStateChanged) and ev.state == ListenerState.CONNECTED:
            up.append(listener)
            return
        elif isinstance(ev, ListenerStateChanged) and ev.state.is_final:
            raise RuntimeError(f"listener {ident}: {ev.state}")


async def main_async(args: argparse.Namespace) -> None:
    settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1,
                              transport="lean", max_listeners=args.listeners + 10)
    async with open_engine(settings) as engine, trio.open_nursery() as nursery:
        await engine.add_source("tone", SourceSpec(kind="tone", tone_hz=440.0, tone_dbfs=-12.0))
        await engine.add_sink("main", SinkSpec(kind="opus"))
        await engine.add_route("tone-main", RouteSpec("tone", "main"))
        loadgen = await Loadgen.start(nursery, sample_every=1000000, unprotect_every=10)
        await trio.sleep(args.settle)
        heap0, rss0 = heap_and_rss()
        up: list = []
        for start in range(0, args.listeners, 50):
            async with trio.open_nursery() as burst:
                for ident in range(start, min(start + 50, args.listeners)):
                    burst.start_soon(connect, engine, loadgen, ident, up)
        await trio.sleep(args.settle)   # RTP out and RTCP in for every listener
        heap1, rss1 = heap_and_rss()
        stats = await loadgen.stats()
        n = len(up)
        lost = sum(s["lost"] for s in stats)
        rr = sum(1 for s in stats if s["packets"] > 0)
        health = [listener.stats() for listener in up]
        reported = sum(1 for h in health if h.rtcp_reports > 0)
        rtt = sum(1 for h in health if h.rtt_ms is not None)
        print(f"{n} listeners connected, {rr} receiving, {lost} packets lost; "
              f"{reported} with receiver reports, {rtt} with an RTT "
              f"(SRTCP refused: {engine.stats().lean_rtcp_rejected})")
        print(f"heap in use: {heap0 / 2**20:.1f} -> {heap1 / 2**20:.1f} MiB, "
              f"{(heap1 - heap0) / n / 1024:.1f} KiB per listener")
        print(f"RSS:         {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB, "
              f"{(rss1 - rss0) / n / 1024:.1f} KiB per listener")
        await loadgen.aclose()
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listeners", type=int, default=500)
    parser.add_argument("--settle", type=float, default=4.0)
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
