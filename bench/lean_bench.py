"""Listener transport benchmark: up to 1000 listeners, side by side in one run.

For each server (the appliance with its webrtcbin transport, the appliance
with its lean transport, Janus's streaming plugin) this starts the server as
its own process on loopback, then holds N listeners on it with
``bench/loadgen`` (one C process, a fixed number of threads; see
bench/loadgen/README.md) and measures, from the server process's
/proc/<pid>/stat, /status and /task:

- CPU (% of one core, utime + stime over a window), RSS, threads and the
  busiest threads at N = 0 / 100 / 250 / 500 / 1000 (listeners come in
  bursts of 50 simultaneous POSTs; the first burst after start is reported
  apart);
- POST -> 201 (Janus: watch -> offer) and POST -> first audio packet
  (p50 / p95) for those bursts;
- per window: packets lost (sequence gaps, per listener; how many of them
  the loadgen's own sockets dropped) and delivered (received / N x 100 per
  second); the pitch a sample of listeners decodes (the source is 440 Hz);
- RSS and threads after every listener has left, against before.

    .venv/bin/python bench/lean_bench.py [--levels 0,100,250,500,1000]
        [--servers webrtcbin,lean,janus,janus-lite] [--window 10]

A server that cannot hold a level (a burst's listener without audio within
10 s, over 1 % lost or under 99 % delivered in a window) stops there and
the table says so. The whole session runs at nice -10 (``--nice``): the
build machine is shared, and without it other jobs starve the server and
the loadgen alike. Results and how to read them: BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]
from support import janus  # noqa: E402  (the tests' Janus config)

LOADGEN_DIR = ROOT / "bench" / "loadgen"
LOADGEN = LOADGEN_DIR / "loadgen"
TOKEN = "bench-token-0123456789"
TONE_HZ = 440.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# the appliance closes a keep-alive connection idle for 10 s; a client must
# not reuse one just then (the request would fail), so it lets go sooner
KEEPALIVE_S = 5.0
PACKETS_PER_S = 100     # 10 ms Opus frames, every server


def build_loadgen() -> Path:
    """Build the C client (make decides whether anything changed)."""
    subprocess.run(["make", "-s", "-C", str(LOADGEN_DIR)], check=True)
    return LOADGEN


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ---- the load generator ----------------------------------------------------------

class LoadgenError(Exception):
    pass


class Loadgen:
    """One loadgen process: listeners by integer id; replies are matched to
    requests by (event, id)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._waiting: dict[int, tuple[str, trio.MemorySendChannel]] = {}
        self._stats: list[dict[str, Any]] = []
        self._stats_done: trio.Event | None = None
        self._summary: trio.MemorySendChannel | None = None
        self.first: dict[int, float] = {}        # id -> monotonic time of the first RTP
        self.errors: dict[int, str] = {}
        self.closed: dict[int, dict[str, Any]] = {}
        self._lock = trio.Lock()
        self.exited: str | None = None

    @classmethod
    async def start(cls, nursery: trio.Nursery, workers: int = 2, sample_every: int = 50,
                    address: str = "127.0.0.1", unprotect_every: int = 1,
                    drop_final_flight: bool = False) -> "Loadgen":
        process = await trio.lowlevel.open_process(
            [str(build_loadgen()), "-w", str(workers), "-s", str(sample_every), "-a", address,
             "-u", str(unprotect_every), *(["-d"] if drop_final_flight else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self = cls(process)
        ready = trio.Event()
        nursery.start_soon(self._read, ready)
        with trio.fail_after(10):
            await ready.wait()
        return self

    async def _read(self, ready: trio.Event) -> None:
        buf = b""
        assert self.process.stdout is not None
        while True:
            chunk = await self.process.stdout.receive_some(1 << 16)
            if not chunk:
                await self.process.wait()
                self.exited = f"loadgen exited with status {self.process.returncode}"
                for _, waiter in self._waiting.values():
                    waiter.send_nowait({"event": "error", "message": self.exited})
                if self._stats_done is not None:
                    self._stats_done.set()
                if self._summary is not None:
                    self._summary.send_nowait({"event": "error", "message": self.exited})
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                self._dispatch(msg, ready)

    def _dispatch(self, msg: dict[str, Any], ready: trio.Event) -> None:
        event, ident = msg["event"], msg.get("id", -1)
        if event == "ready":
            ready.set()
        elif event == "first":
            self.first[ident] = msg["t"]
        elif event == "stats":
            self._stats.append(msg)
        elif event == "stats-end":
            assert self._stats_done is not None
            self._stats_done.set()
        elif event == "summary":
            assert self._summary is not None
            self._summary.send_nowait(msg)
        elif event == "closed":
            self.closed[ident] = msg
        if event == "error":
            self.errors[ident] = msg["message"]
        waiter = self._waiting.get(ident)
        if waiter is not None and event in (waiter[0], "error"):
            del self._waiting[ident]
            waiter[1].send_nowait(msg)

    async def _send(self, text: bytes) -> None:
        assert self.process.stdin is not None
        if self.exited:
            raise LoadgenError(self.exited)
        async with self._lock:
            await self.process.stdin.send_all(text)

    async def _request(self, key: tuple[str, int], text: bytes) -> dict[str, Any]:
        """Send a command; wait for the reply ``key`` = (event, id) or an error."""
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[key[1]] = (key[0], send)
        await self._send(text)
        with trio.fail_after(10):
            msg = await receive.receive()
        if msg["event"] == "error":
            raise LoadgenError(f"listener {key[1]}: {msg['message']}")
        return msg

    async def offer(self, ident: int) -> str:
        return (await self._request(("offer", ident), b"offer %d\n" % ident))["sdp"]

    async def answer(self, ident: int, sdp: str) -> None:
        body = sdp.encode()
        await self._send(b"answer %d %d\n" % (ident, len(body)) + body)

    async def remote_offer(self, ident: int, sdp: str) -> str:
        body = sdp.encode()
        msg = await self._request(("answer", ident), b"remote-offer %d %d\n" % (ident, len(body))
                                  + body)
        return msg["sdp"]

    async def close(self, ident: int) -> None:
        await self._send(b"close %d\n" % ident)

    async def stats(self) -> list[dict[str, Any]]:
        self._stats = []
        self._stats_done = trio.Event()
        await self._send(b"stats\n")
        with trio.fail_after(60):
            await self._stats_done.wait()
        if self.exited:
            raise LoadgenError(self.exited)
        return self._stats

    async def summary(self) -> dict[str, Any]:
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._summary = send
        await self._send(b"summary\n")
        with trio.fail_after(10):
            msg = await receive.receive()
        if msg["event"] == "error":
            raise LoadgenError(msg["message"])
        return msg

    async def wait_first(self, idents: list[int], timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not all(i in self.first for i in idents):
                await trio.sleep(0.02)
            return True
        return False

    async def aclose(self) -> None:
        try:
            await self._send(b"quit\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        with trio.move_on_after(5):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# ---- server processes --------------------------------------------------------------

def proc_sample(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, RSS KiB, threads) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    return cpu, rss, threads


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


@dataclass
class Server:
    """A running server under test: how to add and remove one listener."""
    name: str
    pid: int
    loadgen: Loadgen
    client: httpx.AsyncClient
    sessions: dict[int, Any] = field(default_factory=dict)

    async def add(self, ident: int, gate: Gate) -> tuple[float, float]:
        """Connect listener ``ident``: make its request, wait at ``gate``,
        send it; returns when it was sent and when the answer (or Janus's
        offer) came."""
        raise NotImplementedError

    async def remove(self, ident: int) -> None:
        raise NotImplementedError


class ApplianceServer(Server):
    async def add(self, ident: int, gate: Gate) -> tuple[float, float]:
        offer = await self.loadgen.offer(ident)
        await gate.wait()
        t0 = time.monotonic()
        r = await self.client.post("/api/whep/main", content=offer,
                                   headers={"Content-Type": "application/sdp",
                                            "Authorization": f"Bearer {TOKEN}"})
        t201 = time.monotonic()
        if r.status_code != 201:
            await self.loadgen.close(ident)
            raise LoadgenError(f"POST gave {r.status_code}: {r.text[:200]}")
        self.sessions[ident] = r.headers["Location"]
        await self.loadgen.answer(ident, r.text)
        return t0, t201

    async def remove(self, ident: int) -> None:
        location = self.sessions.pop(ident, None)
        await self.loadgen.close(ident)
        if location is not None:
            await self.client.delete(location, headers={"Authorization": f"Bearer {TOKEN}"})


def transport_setting() -> tuple[str, str] | None:
    """(table, key) of the setting that forces the appliance's listener
    transport, if this version of the appliance has one."""
    import dataclasses

    from appliance.config import ServerConfig
    from appliance.model import EngineSettings
    for table, cls in (("engine", EngineSettings), ("server", ServerConfig)):
        for f in dataclasses.fields(cls):
            if "transport" in f.name:
                return table, f.name
    return None


async def start_appliance(tmp: Path, transport: str | None, max_listeners: int,
                          server_settings: str = "", *, ice_address: str = "127.0.0.1",
                          more_tables: str = "") -> tuple[trio.Process, str]:
    """The appliance in its own process; ``server_settings``: more lines for
    its ``[server]`` table; ``ice_address``: the one address its WebRTC
    gathers on; ``more_tables``: more TOML tables at the end of its config
    (``[[relays]]``)."""
    config = tmp / "bench.toml"
    # any free UDP port for the lean transport: another appliance may hold 8443
    tables = {"engine": f'ice_addresses = ["{ice_address}"]\nmax_listeners = {max_listeners}\n'
                        f'lean_port = 0\n',
              # one load generator is one client address holding every listener
              "server": f'host = "127.0.0.1"\nmax_listeners = {max_listeners}\n'
                        f'post_rate_per_s = 100000.0\npost_burst = 100000\n'
                        f'max_connecting_per_client = 1000\nhttps_port = 0\n'
                        + server_settings}
    if transport is not None:
        setting = transport_setting()
        assert setting is not None
        tables[setting[0]] += f'{setting[1]} = "{transport}"\n'
    config.write_text(
        f'state_dir = "{tmp}/state"\n'
        f'[server]\n{tables["server"]}'
        f'[admin]\ntoken = "{TOKEN}"\n'
        f'[engine]\n{tables["engine"]}'
        f'[[sources]]\nid = "tone"\nname = "Tone"\nkind = "tone"\ntone_hz = {TONE_HZ}\n'
        f'[[sinks]]\nid = "main"\nname = "Main"\nkind = "opus"\n'
        f'[[routes]]\nid = "tone-main"\nsource_id = "tone"\nsink_id = "main"\n'
        + more_tables)
    notify_path = tmp / "notify"
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(notify_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": str(ROOT)}
    process = await trio.lowlevel.open_process(
        # LEAN_BENCH_WRAP: a command to run the appliance under (heaptrack -o ...)
        [*os.environ.get("LEAN_BENCH_WRAP", "").split(),
         sys.executable, "-m", "appliance.cli", "run", "--config", str(config),
         "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"],
        env=env, cwd=str(ROOT))
    try:
        with trio.fail_after(60):
            while True:
                ready = (await notify.recv(4096)).decode()
                if "READY=1" in ready:
                    break
    finally:
        notify.close()
    url = re.search(r"http://127\.0\.0\.1:\d+", ready).group(0)
    return process, url


async def stop_process(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(2)
        with trio.move_on_after(20):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


# ---- the measurement -------------------------------------------------------------

@dataclass
class Row:
    n: int
    cpu_pct: float
    rss_kib: int
    threads: int
    lost: int
    packets: int
    loadgen_cpu_pct: float
    client_dropped: int     # of ``lost``: dropped by the loadgen's own full sockets
    delivered: float        # packets received / (N x 100 per s x window): a server that
                            # falls behind before numbering packets loses no sequence numbers
    top_threads: str = ""   # where the server's CPU went


async def measure_window(server: Server, n: int, window: float) -> Row:
    s0 = await server.loadgen.summary()
    th0 = thread_cpu(server.pid)
    c0, _, _ = proc_sample(server.pid)
    g0, _, _ = proc_sample(server.loadgen.process.pid)
    t0 = time.monotonic()
    await trio.sleep(window)
    c1, rss, threads = proc_sample(server.pid)
    g1, _, _ = proc_sample(server.loadgen.process.pid)
    t1 = time.monotonic()
    th1 = thread_cpu(server.pid)
    s1 = await server.loadgen.summary()
    busiest = sorted(((th1[k] - th0.get(k, 0.0), k) for k in th1), reverse=True)[:3]
    top = ", ".join(f"{name} {100 * cpu / (t1 - t0):.1f}" for cpu, name in busiest if cpu > 0)
    return Row(n, 100 * (c1 - c0) / (t1 - t0), rss, threads, s1["lost"] - s0["lost"],
               s1["packets"] - s0["packets"], 100 * (g1 - g0) / (t1 - t0),
               s1["rx_dropped"] - s0["rx_dropped"],
               (s1["packets"] - s0["packets"]) / (n * PACKETS_PER_S * (s1["t"] - s0["t"]))
               if n else 1.0, top)


class Gate:
    """Opens when every one of ``count`` listeners has its request ready, so
    that their POSTs leave at the same moment."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.opened = trio.Event()

    def failed(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.opened.set()

    async def wait(self) -> None:
        self.failed()   # this one is ready
        await self.opened.wait()


async def add_burst(server: Server, idents: list[int], times: dict[str, list[float]]) -> list[str]:
    """POST ``idents`` at the same moment; returns the errors."""
    gate = Gate(len(idents))
    errors: list[str] = []
    started: dict[int, float] = {}

    async def one(ident: int) -> None:
        try:
            t0, t_answer = await server.add(ident, gate)
            started[ident] = t0
            times["post_201"].append(t_answer - t0)
        except (LoadgenError, httpx.HTTPError) as error:
            errors.append(f"{ident}: {error}")
            gate.failed()

    async with trio.open_nursery() as nursery:
        for ident in idents:
            nursery.start_soon(one, ident)
    await server.loadgen.wait_first(list(started), timeout=10)
    missing = []
    for ident, t0 in started.items():
        if ident in server.loadgen.first:
            times["first_audio"].append(server.loadgen.first[ident] - t0)
        else:
            missing.append(ident)
    if missing:
        try:
            states = {s["id"]: s for s in await server.loadgen.stats()}
        except (LoadgenError, trio.TooSlowError):
            states = {}
        state = states.get(missing[0], {})
        stages: dict[str, int] = {}   # how far the late ones got
        for ident in missing:
            st = states.get(ident, {})
            stage = ("no ICE" if not st.get("ice") else f"DTLS {st.get('dtls')}"
                     if st.get("dtls") != "up" else "up, audio late")
            stages[stage] = stages.get(stage, 0) + 1
        detail = {k: state.get(k) for k in ("ice", "dtls", "stun_in", "stun_bad", "packets",
                                             "unprotect_fail", "rtcp_in")}
        for k in ("t_ice", "t_dtls", "t_first"):   # seconds after the answer came
            if state.get(k):
                detail[k] = round(state[k] - state["t_started"], 3)
        errors.append(f"{len(missing)} without audio within 10 s {stages}; listener "
                      f"{missing[0]}: {detail} {server.loadgen.errors.get(missing[0], '')}")
    return errors


async def leave_all(server: Server) -> list[str]:
    """Every listener leaves (20 at a time); returns the errors."""
    limiter = trio.CapacityLimiter(20)
    errors: list[str] = []

    async def leave(ident: int) -> None:
        async with limiter:
            try:
                await server.remove(ident)
            except (LoadgenError, httpx.HTTPError) as error:
                errors.append(f"{ident}: {error!r}")

    async with trio.open_nursery() as nursery:
        for ident in list(server.sessions):
            nursery.start_soon(leave, ident)
    return errors


async def run_server(server: Server, levels: list[int], window: float, burst: int,
                     settle: float, max_loss: float) -> dict[str, Any]:
    rows: list[Row] = []
    times: dict[str, list[float]] = {"post_201": [], "first_audio": []}
    first_burst: dict[str, list[float]] = {"post_201": [], "first_audio": []}
    _, rss_before, threads_before = proc_sample(server.pid)
    note = ""
    next_id = 0
    for n in levels:
        while len(server.sessions) < n:
            count = min(burst, n - len(server.sessions))
            idents = list(range(next_id, next_id + count))
            next_id += count
            errors = await add_burst(server, idents,
                                     first_burst if not first_burst["post_201"] else times)
            if errors:
                note = f"stopped before N={n}: {len(errors)} of a burst failed ({errors[0]})"
                break
        if note:
            break
        await trio.sleep(settle)
        row = await measure_window(server, n, window)
        rows.append(row)
        print(f"  {server.name}: N={n:5d} CPU {row.cpu_pct:6.2f} %  RSS {row.rss_kib / 1024:7.1f} "
              f"MiB  threads {row.threads:5d}  lost {row.lost}/{row.packets + row.lost} "
              f"({row.client_dropped} in loadgen sockets), delivered {row.delivered:.1%}  "
              f"(loadgen CPU {row.loadgen_cpu_pct:.1f} %; busiest server threads, %: "
              f"{row.top_threads}; load average {os.getloadavg()[0]:.1f})", flush=True)
        if row.lost > max_loss * (row.packets + row.lost):
            note = (f"stopped after N={n}: {row.lost} of {row.packets + row.lost} packets lost "
                    f"in the window (more than {max_loss:.1%})")
            break
        if row.delivered < 1 - max_loss:
            note = (f"stopped after N={n}: only {row.delivered:.1%} of the stream's packets "
                    "arrived in the window")
            break
    stats = await server.loadgen.stats()
    pitches = [s["pitch_hz"] for s in stats if s["decoded_s"] > 1]
    total_lost = sum(s["lost"] for s in stats)
    total_packets = sum(s["packets"] for s in stats)
    unprotect_fail = sum(s["unprotect_fail"] for s in stats)
    client_dropped = sum(s["rx_dropped"] for s in stats)
    leave_errors = await leave_all(server)
    await trio.sleep(settle + 3)   # the server frees what it frees in the background
    _, rss_after, threads_after = proc_sample(server.pid)
    return {"rows": rows, "times": times, "first_burst": first_burst, "note": note,
            "total_lost": total_lost, "total_packets": total_packets,
            "unprotect_fail": unprotect_fail, "client_dropped": client_dropped,
            "rss_before": rss_before, "rss_after": rss_after, "threads_before": threads_before,
            "threads_after": threads_after, "pitches": pitches, "leave_errors": leave_errors}


def line_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x for (x, y) points."""
    if len(points) < 2:
        return float("nan")
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else float("nan")


def slope(rows: list[Row], attr: str) -> float:
    """Least-squares slope of ``attr`` over N."""
    return line_slope([(r.n, getattr(r, attr)) for r in rows])


def report(name: str, result: dict[str, Any]) -> None:
    rows: list[Row] = result["rows"]
    print(f"\n{name}")
    print("  listeners  CPU % of a core   RSS MiB  threads   lost / packets   delivered  "
          "loadgen CPU %")
    for r in rows:
        print(f"  {r.n:9d}  {r.cpu_pct:15.2f}  {r.rss_kib / 1024:8.1f}  {r.threads:7d}   "
              f"{r.lost:4d} / {r.packets + r.lost:<9d}  {r.delivered:8.1%}  "
              f"{r.loadgen_cpu_pct:12.1f}")
    if result["note"]:
        print(f"  {result['note']}")
    print(f"  per listener (least squares over N): {slope(rows, 'cpu_pct'):.4f} % of a core, "
          f"{slope(rows, 'rss_kib'):.1f} KiB, {slope(rows, 'threads'):.2f} threads")
    for label, times in (("first burst after start", result["first_burst"]),
                         ("later bursts", result["times"])):
        if times["post_201"]:
            ms201 = [t * 1000 for t in times["post_201"]]
            msfa = [t * 1000 for t in times["first_audio"]]
            print(f"  {label} ({len(ms201)} POSTs): POST->201 p50 {statistics.median(ms201):.1f} "
                  f"ms p95 {pct(ms201, 95):.1f} ms; POST->first audio p50 "
                  f"{statistics.median(msfa) if msfa else float('nan'):.1f} ms "
                  f"p95 {pct(msfa, 95):.1f} ms")
    print(f"  RSS before {result['rss_before'] / 1024:.1f} MiB, after all left "
          f"{result['rss_after'] / 1024:.1f} MiB "
          f"({(result['rss_after'] - result['rss_before']) / 1024:+.1f} MiB); threads "
          f"{result['threads_before']} -> {result['threads_after']}")
    print(f"  whole run, every listener from its first packet to the end: "
          f"{result['total_lost']} of {result['total_lost'] + result['total_packets']} lost, "
          f"{result['unprotect_fail']} failed SRTP, {result['client_dropped']} dropped by the "
          f"loadgen's own sockets")
    if result["leave_errors"]:
        print(f"  {len(result['leave_errors'])} listeners could not leave: "
              f"{result['leave_errors'][0]}")
    pitches = result["pitches"]
    if pitches:
        print(f"  pitch heard by {len(pitches)} sampled listeners: "
              f"{min(pitches):.1f}-{max(pitches):.1f} Hz (source {TONE_HZ:g} Hz)")


@asynccontextmanager
async def running_appliance(transport: str | None, max_listeners: int, *, workers: int = 2,
                            unprotect_every: int = 1
                            ) -> AsyncIterator[tuple[trio.Process, str, Loadgen]]:
    """An appliance process and a loadgen for the block; both stopped after."""
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            process, url = await start_appliance(Path(tmp), transport, max_listeners)
            loadgen = await Loadgen.start(nursery, workers=workers,
                                          unprotect_every=unprotect_every)
            try:
                yield process, url, loadgen
            finally:
                await loadgen.aclose()
                await stop_process(process)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def appliance_client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the appliance that many listeners share."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200,
                          keepalive_expiry=KEEPALIVE_S)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        yield client


async def bench_appliance(args: argparse.Namespace, transport: str | None) -> dict[str, Any]:
    name = f"appliance ({transport or 'webrtcbin'})"
    async with running_appliance(transport, max(args.levels) + 100, workers=args.workers,
                                 unprotect_every=args.unprotect_every) as (process, url, loadgen):
        async with appliance_client(url) as client:
            server = ApplianceServer(name, process.pid, loadgen, client)
            return await run_server(server, args.levels, args.window, args.burst,
                                    args.settle, args.max_loss)


async def main_async(args: argparse.Namespace) -> None:
    if args.nice:
        # every process started from here (servers, loadgen) inherits it; with
        # autogroup scheduling a niceness counts only inside its session, so
        # the session's group gets it too
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
            Path("/proc/self/autogroup").write_text(str(args.nice))
        except OSError:
            pass
    print(f"listener transport benchmark, {os.cpu_count()} cores, loopback, loadgen "
          f"({args.workers} threads), levels {args.levels}, {args.window:g} s windows, "
          f"nice {os.getpriority(os.PRIO_PROCESS, 0)}, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    results = {}
    setting = transport_setting()
    skipped = []
    for name in args.servers:
        if name in ("janus", "janus-lite"):
            label = f"Janus 1.1.2 streaming plugin, {'ICE-lite' if name == 'janus-lite' else 'full ICE'}"
            result = await bench_janus(args, lite=name == "janus-lite")
            if result is None:
                skipped.append(f"{label}: needs janus and gst-launch-1.0 (apt-get install "
                               "janus gstreamer1.0-tools)")
            else:
                results[label] = result
        elif setting is not None:
            results[f"appliance, {name} transport"] = await bench_appliance(args, name)
        elif name == "webrtcbin":   # the only transport there is
            results["appliance, webrtcbin transport (no transport setting yet)"] = \
                await bench_appliance(args, None)
        else:
            skipped.append(f"appliance, {name} transport: this appliance has no setting "
                           "to choose its listener transport yet")
    for name, result in results.items():
        report(name, result)
    for line in skipped:
        print(f"\nskipped: {line}")


# ---- Janus -------------------------------------------------------------------------

def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_address() -> str:
    """This machine's own IPv4 address on its default route (no packet is
    sent). Janus does not gather on loopback and binds its ICE sockets to
    the interface, so they cannot answer 127.0.0.1; both sides use this
    address instead, and the traffic still never leaves the machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("198.51.100.1", 9))
        return s.getsockname()[0]


def write_janus_config(conf: Path, http_port: int, audio_port: int, lite: bool,
                       address: str) -> Path:
    """The tests' Janus config with one static Opus mountpoint fed on
    ``audio_port``, no session timeout and less logging."""
    return janus.write_config(conf, http_port, ice=address, lite=lite, session_timeout_s=0,
                              debug_level=3, mountpoints=f"""tone: {{
  type = "rtp"
  id = 1
  description = "tone"
  audio = true
  video = false
  audioport = {audio_port}
  audiopt = 111
  audiocodec = "opus"
  audiortpmap = "opus/48000/2"
}}
""")


class JanusServer(Server):
    """Listeners through the HTTP API: attach to janus.plugin.streaming,
    ``watch`` (Janus offers), the loadgen answers, ``start``. Listeners share
    one Janus session per burst (one long poll each) to keep the Python side
    light; each has its own handle, PeerConnection, ICE agent and DTLS."""

    def __init__(self, *args: Any, nursery: trio.Nursery, mountpoint: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nursery = nursery
        self.mountpoint = mountpoint
        self.janus_sessions: dict[int, int] = {}      # burst number -> session id
        self.pending: dict[str, trio.MemorySendChannel] = {}
        self.tx = 0

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.tx += 1
        body = {**body, "transaction": f"t{self.tx}"}
        r = await self.client.post(path, json=body)
        reply = r.json()
        if reply.get("janus") not in ("success", "ack"):
            raise LoadgenError(f"janus: {reply}")
        return reply

    async def _poll(self, session: int) -> None:
        while True:
            r = await self.client.get(f"/janus/{session}", params={"maxev": 50}, timeout=60)
            events = r.json()
            for event in events if isinstance(events, list) else [events]:
                waiter = self.pending.pop(event.get("transaction", ""), None)
                if waiter is not None and "jsep" in event:
                    waiter.send_nowait(event)

    async def _session(self, ident: int) -> int:
        group = ident // 50
        if group not in self.janus_sessions:
            self.janus_sessions[group] = -1
            reply = await self._post("/janus", {"janus": "create"})
            self.janus_sessions[group] = reply["data"]["id"]
            self.nursery.start_soon(self._poll, reply["data"]["id"])
        while self.janus_sessions[group] < 0:
            await trio.sleep(0.01)
        return self.janus_sessions[group]

    async def add(self, ident: int, gate: Gate) -> tuple[float, float]:
        session = await self._session(ident)
        reply = await self._post(f"/janus/{session}", {"janus": "attach",
                                                       "plugin": "janus.plugin.streaming"})
        handle = f"/janus/{session}/{reply['data']['id']}"
        self.sessions[ident] = handle
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        await gate.wait()
        t0 = time.monotonic()
        self.pending[f"t{self.tx + 1}"] = send
        await self._post(handle, {"janus": "message", "body": {"request": "watch",
                                                                "id": self.mountpoint}})
        with trio.fail_after(10):
            event = await receive.receive()
        t_offer = time.monotonic()
        answer = await self.loadgen.remote_offer(ident, event["jsep"]["sdp"])
        await self._post(handle, {"janus": "message", "body": {"request": "start"},
                                  "jsep": {"type": "answer", "sdp": answer}})
        return t0, t_offer

    async def remove(self, ident: int) -> None:
        handle = self.sessions.pop(ident, None)
        await self.loadgen.close(ident)
        if handle is not None:
            await self._post(handle, {"janus": "detach"})


async def bench_janus(args: argparse.Namespace, lite: bool) -> dict[str, Any] | None:
    if shutil.which("janus") is None or shutil.which("gst-launch-1.0") is None:
        return None
    name = f"Janus {'ICE-lite' if lite else 'full ICE'}"
    with tempfile.TemporaryDirectory() as tmp:
        http_port, audio_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        address = host_address()
        config = write_janus_config(Path(tmp) / "conf", http_port, audio_port, lite, address)
        log = open(Path(tmp) / "janus.log", "wb")
        janus = await trio.lowlevel.open_process(
            ["janus", "-C", str(config), "-F", str(config.parent), "-o"], stdout=log,
            stderr=subprocess.STDOUT)
        # the same stream as the appliance's: 440 Hz at -12 dBFS, stereo,
        # 10 ms Opus frames, 128 kbit/s, restricted low delay
        feeder = await trio.lowlevel.open_process(
            ["gst-launch-1.0", "-q", "audiotestsrc", "is-live=true", "wave=sine",
             f"freq={TONE_HZ}", "volume=0.25", "!", "audio/x-raw,rate=48000,channels=2", "!",
             "opusenc", "frame-size=10", "bitrate=128000", "audio-type=restricted-lowdelay",
             "complexity=5", "!", "rtpopuspay", "pt=111", "!", "udpsink", "host=127.0.0.1",
             f"port={audio_port}"])
        url = f"http://127.0.0.1:{http_port}"
        try:
            async with trio.open_nursery() as nursery:
                limits = httpx.Limits(max_connections=200, max_keepalive_connections=200,
                                      keepalive_expiry=KEEPALIVE_S)
                async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
                    with trio.fail_after(30):
                        while True:
                            try:
                                if (await client.get("/janus/info")).status_code == 200:
                                    break
                            except httpx.TransportError:
                                pass
                            await trio.sleep(0.1)
                    loadgen = await Loadgen.start(nursery, workers=args.workers, address=address,
                                                  unprotect_every=args.unprotect_every)
                    try:
                        server = JanusServer(name, janus.pid, loadgen, client, nursery=nursery)
                        result = await run_server(server, args.levels, args.window, args.burst,
                                                  args.settle, args.max_loss)
                    finally:
                        await loadgen.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            await stop_process(feeder)
            await stop_process(janus)
            log.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="0,100,250,500,1000",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--servers", default="webrtcbin,lean,janus",
                        type=lambda s: s.split(","),
                        help="any of webrtcbin, lean (the appliance's two listener transports), "
                             "janus, janus-lite (Janus with ice_lite = true)")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="loadgen threads")
    parser.add_argument("--unprotect-every", type=int, default=10,
                        help="loadgen: SRTP-unprotect one packet in this many (decoding "
                             "listeners: all); loss needs only the clear RTP header")
    parser.add_argument("--nice", type=int, default=-10,
                        help="run the benchmark, its servers and the loadgen at this niceness "
                             "(the build machine is shared; needs root, else ignored)")
    parser.add_argument("--max-loss", type=float, default=0.01,
                        help="stop adding listeners when a window loses more than this fraction")
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
