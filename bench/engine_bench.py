"""Engine benchmark: capture-to-network latency, and what listeners cost.

    .venv/bin/python bench/engine_bench.py [--counts 0,1,10,50] [--seconds 10]

The engine runs alone in a child process (no web server), so its CPU time
and memory are its own; real aiortc peers in this process connect to it over
loopback and keep receiving (and decoding) the stream. Printed:

- capture-to-network latency p50/p95: from the capture time of a frame's
  first sample to the moment its SRTP packet is handed to the socket
  (measured in the engine at nicesink), for a generated tone and for an
  ALSA capture PCM with 64- and 128-frame periods;
- engine CPU (% of one core), RSS and threads with N connected listeners,
  and the marginal cost of one more listener;
- RSS after every listener has left.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the engine process ----------------------------------------------------------

def serve(source: str, period: int) -> None:
    """Child: an engine with one source and one Opus sink, driven by JSON
    lines on stdin, answering on stdout."""
    import trio

    from appliance import (
        AnswerFailed, AnswerReady, EngineSettings, RouteSpec, SinkSpec, SourceSpec, open_engine,
    )

    async def main() -> None:
        # Real-time priority for the audio path, as the appliance's service
        # has it (works as root; elsewhere it is silently not granted).
        settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1,
                                  max_listeners=1000, realtime_priority=20)
        async with open_engine(settings) as engine:
            if source == "tone":
                spec = SourceSpec(kind="tone", tone_hz=1000.0)
            else:
                spec = SourceSpec(kind="alsa", device=source, period_frames=period)
            await engine.add_source("in", spec)
            await engine.add_sink("main", SinkSpec(kind="opus"))
            await engine.add_route("r", RouteSpec("in", "main"))
            listeners: dict[int, Any] = {}
            out = sys.stdout

            def reply(obj: dict) -> None:
                out.write(json.dumps(obj) + "\n")
                out.flush()

            async def handle(cmd: dict) -> None:
                if cmd["op"] == "listen":
                    listener = engine.start_listener("main", cmd["offer"])
                    listeners[listener.id] = listener
                    # a state change may come before the answer (webrtcbin)
                    async for ev in listener.events:
                        if isinstance(ev, (AnswerReady, AnswerFailed)):
                            break
                    reply({"tag": cmd["tag"], "id": listener.id,
                           "answer": getattr(ev, "sdp", None), "error": getattr(ev, "reason", None)})
                elif cmd["op"] == "drop":
                    await listeners.pop(cmd["id"]).aclose()
                    reply({"tag": cmd["tag"]})
                elif cmd["op"] == "stats":
                    s = engine.sink_stats("main")
                    reply({"tag": cmd["tag"], "listeners": engine.stats().listeners,
                           "p50": s.send_latency_p50_ms, "p95": s.send_latency_p95_ms,
                           "samples": s.send_latency_samples, "packets": s.packets_out,
                           "frames": s.frames_encoded})

            async with trio.open_nursery() as nursery:
                stdin = trio.lowlevel.FdStream(os.dup(0))
                buf = b""
                while True:
                    data = await stdin.receive_some()
                    if not data:
                        break
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        cmd = json.loads(line)
                        if cmd["op"] == "quit":
                            nursery.cancel_scope.cancel()
                            return
                        nursery.start_soon(handle, cmd)

    trio.run(main)


# ---- the driver ------------------------------------------------------------------

class EngineProcess:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.pending: dict[int, asyncio.Future] = {}
        self.tag = 0
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, source: str, period: int, env: dict) -> "EngineProcess":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", source, str(period),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
        return cls(proc)

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            self.pending.pop(msg["tag"]).set_result(msg)

    async def ask(self, **cmd) -> dict:
        self.tag += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.tag] = fut
        self.proc.stdin.write((json.dumps({**cmd, "tag": self.tag}) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, 30)

    async def quit(self) -> None:
        self.proc.stdin.write(b'{"op": "quit"}\n')
        await self.proc.stdin.drain()
        await asyncio.wait_for(self.proc.wait(), 30)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)


class Peer:
    """An aiortc listener that decodes what it receives and throws it away."""

    def __init__(self):
        from aiortc import RTCConfiguration, RTCPeerConnection
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("audio", direction="recvonly")
        self.connected = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()

        @self.pc.on("track")
        def _track(track) -> None:
            async def drain() -> None:
                while True:
                    await track.recv()
            self.tasks.append(asyncio.ensure_future(drain()))

    async def connect(self, engine: EngineProcess) -> int:
        from aiortc import RTCSessionDescription
        await self.pc.setLocalDescription(await self.pc.createOffer())
        msg = await engine.ask(op="listen", offer=self.pc.localDescription.sdp)
        if not msg["answer"]:
            raise RuntimeError(msg["error"])
        await self.pc.setRemoteDescription(RTCSessionDescription(msg["answer"], "answer"))
        await asyncio.wait_for(self.connected.wait(), 20)
        return msg["id"]

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await self.pc.close()


async def measure(engine: EngineProcess, seconds: float) -> tuple[float, int, int]:
    cpu0, t0 = engine.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = (engine.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
    return cpu, engine.status("VmRSS"), engine.status("Threads")


async def latency_run(label: str, source: str, period: int, env: dict, seconds: float) -> None:
    engine = await EngineProcess.start(source, period, env)
    peer = Peer()
    lid = await peer.connect(engine)
    await asyncio.sleep(seconds)
    s = await engine.ask(op="stats")
    print(f"  {label:<34} p50 {s['p50']:6.2f} ms   p95 {s['p95']:6.2f} ms   "
          f"({s['samples']} packets)")
    await engine.ask(op="drop", id=lid)
    await peer.close()
    await engine.quit()


async def cost_run(counts: list[int], seconds: float, env: dict) -> None:
    engine = await EngineProcess.start("tone", 128, env)
    peers: list[tuple[Peer, int]] = []
    rows = []
    print(f"  {'listeners':>9} {'CPU % of a core':>16} {'RSS MiB':>9} {'threads':>8}"
          f" {'send p50':>9} {'send p95':>9} {'sent/expected':>15}")
    for n in counts:
        while len(peers) < n:
            batch = [Peer() for _ in range(min(10, n - len(peers)))]
            ids = await asyncio.gather(*(p.connect(engine) for p in batch))
            peers += list(zip(batch, ids, strict=True))
        await asyncio.sleep(2)  # settle: handshakes done, queues steady
        before = await engine.ask(op="stats")
        cpu, rss, threads = await measure(engine, seconds)
        s = await engine.ask(op="stats")
        # Every frame encoded in the window must have left once per listener.
        sent = s["packets"] - before["packets"]
        expected = (s["frames"] - before["frames"]) * n
        assert s["listeners"] == n, s
        rows.append((n, cpu, rss, threads))
        print(f"  {n:>9} {cpu:>16.2f} {rss / 1024:>9.1f} {threads:>8}"
              f" {s['p50']:>8.2f}ms {s['p95']:>8.2f}ms {sent:>7}/{expected:<7}" if n else
              f"  {n:>9} {cpu:>16.2f} {rss / 1024:>9.1f} {threads:>8}")
    async def drop_all() -> tuple[int, int]:
        for peer, lid in peers:
            await engine.ask(op="drop", id=lid)
            await peer.close()
        peers.clear()
        await asyncio.sleep(2)
        _, rss, threads = await measure(engine, 1)
        return rss, threads

    rss_after, threads_after = await drop_all()
    # Once more: a leak would show as growth from one round to the next.
    top = counts[-1]
    while len(peers) < top:
        batch = [Peer() for _ in range(min(10, top - len(peers)))]
        peers += list(zip(batch, await asyncio.gather(*(p.connect(engine) for p in batch)),
                          strict=True))
    rss_again, _ = await drop_all()
    await engine.quit()
    (n1, c1, r1, t1), (n2, c2, r2, t2) = rows[-2], rows[-1]
    if n2 > n1:
        print(f"  marginal listener ({n1}->{n2}): {(c2 - c1) / (n2 - n1):.3f} % of a core, "
              f"{(r2 - r1) / (n2 - n1):.0f} KiB, {(t2 - t1) / (n2 - n1):.1f} threads")
    print(f"  after all listeners left: RSS {rss_after / 1024:.1f} MiB, {threads_after} threads "
          f"(with {rows[0][0]}: {rows[0][2] / 1024:.1f} MiB); after another {top} came and "
          f"went: {rss_again / 1024:.1f} MiB")


async def main(args: argparse.Namespace) -> None:
    import support.webrtc  # noqa: F401  (keeps aiortc's ICE on 127.0.0.1)

    from support.audio_sim import tone, write_raw_s32

    env = dict(os.environ)
    print(f"engine benchmark on {os.cpu_count()} cores, Opus 10 ms frames, 48 kHz stereo")
    print("capture-to-network latency (1 listener):")
    await latency_run("tone source", "tone", 128, env, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "in.raw"
        write_raw_s32(raw, tone(700, args.seconds + 30))
        rc = Path(tmp) / "asoundrc"
        rc.write_text(f'pcm.filecap {{ type file slave.pcm "null" file "/dev/null" '
                      f'infile "{raw}" format "raw" }}\n')
        alsa_env = dict(env, ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{rc}")
        for period in (64, 128):
            await latency_run(f"ALSA capture, {period}-frame periods", "filecap", period,
                              alsa_env, args.seconds)
    print("cost of listeners (tone source; aiortc peers in another process):")
    await cost_run(args.counts, args.seconds, env)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="0,1,10,50",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main(parser.parse_args()))
