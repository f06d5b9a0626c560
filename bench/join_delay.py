"""Join delay: how a browser's jitter buffer starts when a listener joins,
and how long it takes to reach its steady delay.

    .venv/bin/python bench/join_delay.py [--joins 20] [--seconds 10]
        [--browsers chromium,firefox] [--output pulse|fake] [--mode low|default]
        [--busy N] [--poll-ms 100] [--eval JS] [--ab JS] [-v] [--json [--raw]]

The real app (hypercorn, the engine, the listen page) on loopback, a tone
routed to the Opus sink ``main``. Each join opens the listen page afresh in
Debian's headless Chromium (playwright) or Firefox ESR (Marionette), presses
Listen, and samples ``getStats()`` inbound-rtp in the page (every 20 ms until
the first packet, then every 100 ms) for --seconds after the first packet.
Joins alternate between the browsers, so both see the same load.

Per interval between two samples the jitter buffer delay is
delta jitterBufferDelay / delta jitterBufferEmittedCount (what the listen
page shows as "buffer"). Printed per browser, p50/p95 over the joins: that
delay at 0.5, 1, 2 and 5 s after the first packet (the first interval ending
then or after), for Chromium also what was queued in its jitter buffer then
(packets received x their length - samples emitted: NetEq times a packet's
wait in ticks of its output's pulls, so jitterBufferDelay misses a wait while
the output is not pulling; the queue does not), the steady value (the
median over the last 2 s), and the time after which the delay stays within
±20 ms of it ("settled": each interval's median with its two neighbours, so
one late sample on a busy machine is not a verdict); plus when the audio
output had played 40 ms (Chromium's media-playout stats: negative is before
the first packet), the first packet and the settling counted from the click
on Listen (what a listener waits for), how many packets the first sample saw
(a burst shows there) and the packets received by 0.5 s and 1 s.

Both browsers reach the appliance over loopback: Chromium the 127.0.0.1
candidate, Firefox ESR (which gathers no loopback candidates) this machine's
own address, which Linux routes over ``lo`` too.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from tests.web.conftest import make_config, open_server  # noqa: E402

SINK = "main"
SETTLE_BAND_MS = 20.0
MARKS_S = (0.5, 1.0, 2.0, 5.0)

# Runs in the page: starts sampling the player's RTCPeerConnection at once
# (before Listen is pressed) and keeps every sample in window.__join.
SAMPLER = """
(() => {
  const sink = %(sink)s, seconds = %(seconds)s;
  const out = { samples: [], events: [], firstMs: null, playout: [], ticks: [], done: false, t0: performance.now(), listenMs: null };
  window.__join = out;
  let seenPc = null;
  const ev = (name) => out.events.push([name, performance.now()]);
  document.querySelector(`.channel[data-sink="${sink}"] button.listen`)
    .addEventListener("click", () => { out.listenMs = performance.now(); ev("listen"); }, { capture: true, once: true });
  const tick = async () => {
    if (out.done) return;
    const player = applianceDebug.cards.get(sink)?.player;
    const pc = player && player.pc;
    if (pc && pc !== seenPc) {
      seenPc = pc;
      ev("pc");
      pc.addEventListener("iceconnectionstatechange", () => ev("ice-" + pc.iceConnectionState));
      pc.addEventListener("connectionstatechange", () => ev("pc-" + pc.connectionState));
      pc.addEventListener("track", () => ev("track"));
      player.audio.addEventListener("playing", () => ev("playing"), { once: true });
    }
    if (pc) {
      let report = null;
      try { report = await pc.getStats(); } catch { report = null; }
      const now = performance.now();
      let s = null, playout = null;
      if (report) report.forEach((x) => {
        if (x.type === "inbound-rtp" && x.kind === "audio") s = x;
        if (x.type === "media-playout") playout = x;
      });
      // what the audio output has pulled (Chromium): from before the first packet
      if (playout) out.playout.push([now, playout.totalSamplesDuration ?? null]);
      if (s) {
        out.samples.push({
          t: now, packets: s.packetsReceived || 0, lost: s.packetsLost || 0,
          jbDelay: s.jitterBufferDelay ?? null, jbCount: s.jitterBufferEmittedCount ?? null,
          jbTarget: s.jitterBufferTargetDelay ?? null, jbMin: s.jitterBufferMinimumDelay ?? null,
          concealed: s.concealedSamples ?? null, samples: s.totalSamplesReceived ?? null,
          inserted: s.insertedSamplesForDeceleration ?? null,
          removed: s.removedSamplesForAcceleration ?? null,
          lastPacket: s.lastPacketReceivedTimestamp ?? null, statsTs: s.timestamp ?? null,
        });
        if (out.firstMs === null && (s.packetsReceived || 0) > 0) out.firstMs = now;
      }
    }
    if (out.firstMs === null) out.ticks.push([performance.now()]);
    if (out.firstMs !== null && performance.now() - out.firstMs > seconds * 1000) { out.done = true; return; }
    setTimeout(tick, out.firstMs === null ? %(poll)s : 100);
  };
  tick();
  return true;
})()
"""

READY = ("window.applianceDebug && applianceDebug.ready && "
         "document.querySelector('.channel[data-sink=\"%s\"] button.listen') !== null" % SINK)


def pct(values: list[float], q: float) -> float:
    values = sorted(v for v in values if v is not None)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def analyse(data: dict, seconds: float) -> dict:
    """One join's samples -> its numbers (times in s after the first packet)."""
    samples = data["samples"]
    first_ms = data["firstMs"]
    if first_ms is None:
        return {"ok": False, "why": "no packet"}
    first = next(i for i, s in enumerate(samples) if s["packets"] > 0)
    # the last poll before the one that saw it (a browser may have no
    # inbound-rtp stats at all before the first packet)
    polls = [t for t, *_ in data.get("ticks", data.get("clock", []))]
    polls = [t for t in polls if t < samples[first]["t"]]
    before = max(polls) if polls else samples[first - 1]["t"] if first else data["t0"]
    # the first packet arrived between the last empty sample and this one
    t_first = (before + samples[first]["t"]) / 2
    intervals = []  # (end time s, delay ms, target ms, packets)
    for a, b in itertools.pairwise(samples):
        if a["jbCount"] is None or b["jbCount"] is None:
            continue
        dn = b["jbCount"] - a["jbCount"]
        if dn <= 0:
            continue
        delay = (b["jbDelay"] - a["jbDelay"]) / dn * 1000
        target = ((b["jbTarget"] - a["jbTarget"]) / dn * 1000
                  if a["jbTarget"] is not None and b["jbTarget"] is not None else None)
        intervals.append(((b["t"] - t_first) / 1000, delay, target, b["packets"]))
    if not intervals:
        return {"ok": False, "why": "nothing emitted"}

    def at(x: float) -> float | None:
        for end, delay, _, _ in intervals:
            if end >= x:
                return delay
        return None

    # Chromium: what has arrived and not yet left the jitter buffer, in ms
    # (packets received x their length - samples emitted). NetEq counts a
    # packet's wait in its own ticks, one per 10 ms pulled by the audio
    # output, so while the output is not pulling, jitterBufferDelay does not
    # see the wait: this does. (Firefox drops what comes before its output
    # runs and counts emitted samples otherwise: not meaningful there.)
    tail = [(s["packets"], s["jbCount"]) for s in samples if s["jbCount"]]
    per_packet = ((tail[-1][1] - tail[len(tail) // 2][1]) / (tail[-1][0] - tail[len(tail) // 2][0])
                  if len(tail) > 4 and tail[-1][0] > tail[len(tail) // 2][0] else None)

    def queued(x: float) -> float | None:
        if not per_packet or data.get("browser") != "chromium":
            return None
        s = min(samples[first:], key=lambda s: abs(s["t"] - t_first - x * 1000))
        return (s["packets"] * per_packet - (s["jbCount"] or 0)) / 48

    def packets_at(x: float) -> int | None:
        last = None
        for s in samples[first:]:
            if (s["t"] - t_first) / 1000 > x:
                break
            last = s["packets"]
        return last

    tail = [d for end, d, _, _ in intervals if end >= seconds - 2.0]
    steady = statistics.median(tail) if tail else float("nan")
    # settled: after the last interval whose median with its two neighbours
    # is off the steady value by more than the band (one interval's blip,
    # e.g. a late getStats on a busy machine, does not count)
    settled = 0.0
    delays = [d for _, d, _, _ in intervals]
    for i, (end, _, _, _) in enumerate(intervals):
        smooth = statistics.median(delays[max(0, i - 1):i + 2])
        if abs(smooth - steady) > SETTLE_BAND_MS:
            settled = end
    events = {name: round((t - t_first) / 1000, 3) for name, t in data["events"]}
    # when the output had played 40 ms (Chromium's media-playout stats)
    output = next((p[0] for p in data.get("playout", []) if p[1] and p[1] >= 0.0395), None)
    last = samples[-1]
    return {
        "ok": True,
        "steady_ms": steady,
        "settled_s": settled,
        "at": {str(x): at(x) for x in MARKS_S},
        "queued": {str(x): queued(x) for x in MARKS_S},
        "max_ms": max(d for _, d, _, _ in intervals),
        "output_40ms_s": None if output is None else round((output - t_first) / 1000, 3),
        "first_packet_after_listen_s": round((t_first - (data.get("listenMs") or data["t0"])) / 1000, 3),
        "first_sample_packets": samples[first]["packets"],
        "first_sample_after_ms": samples[first]["t"] - before,
        "packets_at": {str(x): packets_at(x) for x in (0.5, 1.0, 2.0)},
        "events_s": events,
        "concealed_samples": last["concealed"], "inserted_samples": last["inserted"],
        "removed_samples": last["removed"], "packets": last["packets"], "lost": last["lost"],
        "series": [[round(e, 2), round(d, 1), None if tg is None else round(tg, 1), p]
                   for e, d, tg, p in intervals],
    }


# ---- the browsers -------------------------------------------------------------

class ChromiumJoin:
    name = "chromium"
    eval = ""
    poll_ms = 20

    def __init__(self, tmp: Path, pulse_server: str | None):
        from tests.e2e.conftest import Browser
        self.b = Browser(tmp / "chromium-profile", pulse_server=pulse_server)

    async def join(self, url: str, mode: str, seconds: float, ab: str = "") -> dict:
        def run(b):
            page = b.new_page()
            try:
                page.goto(url)
                page.wait_for_function(READY, timeout=15000)
                page.evaluate(f"applianceDebug.setLowLatency({'true' if mode == 'low' else 'false'})")
                for script in (self.eval, ab):
                    if script:
                        page.evaluate(script)
                page.evaluate(SAMPLER % {"sink": json.dumps(SINK), "seconds": seconds, "poll": self.poll_ms})
                page.click(f'.channel[data-sink="{SINK}"] button.listen')
                page.wait_for_function("window.__join.done", timeout=(seconds + 20) * 1000,
                                       polling=200)
                data = page.evaluate("window.__join")
                page.click(f'.channel[data-sink="{SINK}"] button.listen')
                page.wait_for_function(
                    f"applianceDebug.state('{SINK}').state === 'idle'", timeout=10000)
                return data
            finally:
                page.close()
        return await self.b.call(run)

    def close(self) -> None:
        self.b.close()


class FirefoxJoin:
    name = "firefox"
    eval = ""
    poll_ms = 20

    def __init__(self, tmp: Path):
        try:
            from tests.e2e.firefox import Firefox
        except ImportError:
            from tests.e2e.test_firefox import Firefox
        self.f = Firefox(str(tmp / "gecko.log"))

    async def join(self, url: str, mode: str, seconds: float, ab: str = "") -> dict:
        def run(f):
            from marionette_driver.by import By
            f.m.navigate(url)
            f.wait("return " + READY + ";")
            f.js(f"applianceDebug.setLowLatency({'true' if mode == 'low' else 'false'});")
            for script in (self.eval, ab):
                if script:
                    f.js(script)
            f.js("return " + (SAMPLER % {"sink": json.dumps(SINK), "seconds": seconds, "poll": self.poll_ms}).strip() + ";")
            f.m.find_element(By.CSS_SELECTOR,
                             f'.channel[data-sink="{SINK}"] button.listen').click()
            f.wait("return window.__join.done;", timeout=seconds + 20)
            data = f.js("return window.__join;")
            f.m.find_element(By.CSS_SELECTOR,
                             f'.channel[data-sink="{SINK}"] button.listen').click()
            f.wait(f"return applianceDebug.state('{SINK}').state === 'idle';")
            f.m.navigate("about:blank")
            return data
        return await self.f.call(run)

    def close(self) -> None:
        self.f.close()


async def run(args) -> dict:
    try:
        from tests.e2e.firefox import local_address
    except ImportError:
        from tests.e2e.test_firefox import local_address
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pulse = None
        if args.output == "pulse":
            from tests.support.audio_sim import PulseDaemon
            pulse = PulseDaemon(tmp / "pulse")
            pulse.start()
            # Firefox takes its audio output from the environment
            os.environ["PULSE_SERVER"] = f"unix:{pulse.socket}"
        addresses = ["127.0.0.1"]
        if "firefox" in args.browsers:
            address = local_address()
            if address is None:
                raise SystemExit("Firefox ESR needs a non-loopback local address")
            addresses.append(address)
        config = make_config(tmp / "state")
        config = config.replace(engine=dataclasses.replace(
            config.engine, ice_addresses=tuple(addresses)))
        browsers = []
        # a busy box (other test suites, an image build): --busy processes
        # spinning at normal priority for the whole run
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy)]
        try:
            for name in args.browsers:
                if name == "chromium":
                    browsers.append(ChromiumJoin(
                        tmp, f"unix:{pulse.socket}" if pulse else None))
                elif name == "firefox":
                    browsers.append(FirefoxJoin(tmp))
                browsers[-1].eval = args.eval
                browsers[-1].poll_ms = args.poll_ms
            async with open_server(config) as server:
                url = f"{server.url}/listen/{SINK}"
                # with --ab, every join is made twice, in turns: as the page
                # is, and after the --ab script (reported as "<browser>+ab")
                runs = [(b, "") for b in browsers]
                if args.ab:
                    runs = [(b, ab) for b in browsers for ab in ("", args.ab)]
                for i in range(args.joins):
                    for b, ab in runs:
                        name = b.name + ("+ab" if ab else "")
                        data = await b.join(url, args.mode, args.seconds, ab)
                        data["browser"] = b.name
                        r = analyse(data, args.seconds)
                        if args.raw:
                            r["raw"] = data
                        r["loadavg_1min"] = os.getloadavg()[0]
                        results.setdefault(name, []).append(r)
                        if args.verbose and not args.json:
                            show_one(name, i, r)
                        with trio.fail_after(15):
                            while server.service.listener_counts()["total"]:
                                await trio.sleep(0.05)
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
            for b in browsers:
                b.close()
            if pulse:
                pulse.stop()
    return results


def show_one(name: str, i: int, r: dict) -> None:
    if not r["ok"]:
        print(f"{name} join {i}: {r['why']}", flush=True)
        return
    marks = " ".join(f"{k}s={v:.0f}" if v is not None else f"{k}s=-" for k, v in r["at"].items())
    print(f"{name} join {i}: {marks} steady={r['steady_ms']:.0f} settled={r['settled_s']:.1f}s "
          f"max={r['max_ms']:.0f} output40ms={r['output_40ms_s']} first-sample packets={r['first_sample_packets']} "
          f"events={r['events_s']}", flush=True)


def summary(results: dict) -> dict:
    out = {}
    for name, joins in results.items():
        ok = [r for r in joins if r["ok"]]
        row = {"joins": len(joins), "ok": len(ok)}

        def both(values):
            return {"p50": pct(values, 0.5), "p95": pct(values, 0.95)}
        for x in MARKS_S:
            row[f"delay_{x}s_ms"] = both([r["at"][str(x)] for r in ok])
        for x in MARKS_S:
            row[f"queued_{x}s_ms"] = both([r["queued"][str(x)] for r in ok])
        row["steady_ms"] = both([r["steady_ms"] for r in ok])
        row["settled_s"] = both([r["settled_s"] for r in ok])
        row["first_packet_after_listen_s"] = both([r["first_packet_after_listen_s"] for r in ok])
        row["settled_after_listen_s"] = both([r["first_packet_after_listen_s"] + r["settled_s"]
                                              for r in ok])
        row["max_ms"] = both([r["max_ms"] for r in ok])
        row["output_40ms_s"] = both([r["output_40ms_s"] for r in ok])
        row["first_sample_packets"] = both([r["first_sample_packets"] for r in ok])
        for x in ("0.5", "1.0"):
            row[f"packets_by_{x}s"] = both([r["packets_at"][x] for r in ok])
        row["settled_within_2s"] = sum(1 for r in ok if r["settled_s"] <= 2.0)
        out[name] = row
    return out


def report(s: dict, args) -> None:
    names = list(s)
    print(f"join delay: {args.joins} joins per browser, {args.seconds:g} s each, "
          f"{args.mode} latency, output {args.output}, {args.busy} busy processes, "
          f"load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; p50 / p95 over the joins")
    print(f"{'':34s}" + "".join(f"{n:>22s}" for n in names))
    rows = [(f"delay at {x:g} s after 1st packet (ms)", f"delay_{x}s_ms") for x in MARKS_S]
    rows += [(f"queued at {x:g} s (ms, Chromium)", f"queued_{x}s_ms") for x in MARKS_S]
    rows += [("steady delay (ms, last 2 s)", "steady_ms"),
             ("largest delay (ms)", "max_ms"),
             ("settled to steady ±20 ms (s)", "settled_s"),
             ("first packet after Listen (s)", "first_packet_after_listen_s"),
             ("settled after Listen (s)", "settled_after_listen_s"),
             ("audio output had played 40 ms (s)", "output_40ms_s"),
             ("packets in the first sample", "first_sample_packets"),
             ("packets by 0.5 s", "packets_by_0.5s"),
             ("packets by 1 s", "packets_by_1.0s")]
    for label, key in rows:
        cells = "".join(f"{s[n][key]['p50']:>10.1f} / {s[n][key]['p95']:>7.1f}   " for n in names)
        print(f"{label:34s}{cells}")
    print(f"{'settled within 2 s (joins)':34s}"
          + "".join(f"{str(s[n]['settled_within_2s']) + ' of ' + str(s[n]['ok']):>22s}"
                    for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="sample this long after the first packet")
    parser.add_argument("--browsers", type=lambda v: v.split(","),
                        default=["chromium", "firefox"])
    parser.add_argument("--mode", choices=["low", "default"], default="low",
                        help="the page's low-latency box (its default is on)")
    parser.add_argument("--output", choices=["pulse", "fake"], default="pulse",
                        help="the browsers' audio output: a PulseAudio null sink or none "
                             "(headless Chromium's fake output)")
    parser.add_argument("--eval", default="",
                        help="JavaScript run in the page before Listen is pressed (to try "
                             "a change to the page without editing it)")
    parser.add_argument("--ab", default="",
                        help="JavaScript for an A/B comparison: every join is made twice, in "
                             "turns, as the page is and after this script ('<browser>+ab')")
    parser.add_argument("--busy", type=int, default=0,
                        help="keep this many CPU-bound processes running meanwhile")
    parser.add_argument("--poll-ms", type=int, default=100,
                        help="getStats every this many ms until the first packet")
    parser.add_argument("--verbose", "-v", action="store_true", help="one line per join")
    parser.add_argument("--raw", action="store_true",
                        help="with --json: every getStats sample and page event too")
    parser.add_argument("--json", action="store_true",
                        help="every join's numbers and series, and the summary, as JSON")
    args = parser.parse_args()
    t0 = time.monotonic()
    results = trio.run(run, args)
    s = summary(results)
    if args.json:
        print(json.dumps({"summary": s, "joins": results, "args": vars(args),
                          "wall_s": time.monotonic() - t0}, indent=1))
    else:
        report(s, args)


if __name__ == "__main__":
    main()
