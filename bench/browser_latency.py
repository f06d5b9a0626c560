"""Browser latency: from the engine's capture clock to audio decoded in a
browser, for the listen page's default and low-latency settings.

    .venv/bin/python bench/browser_latency.py [--seconds 20] [--frame-ms 10]
        [--targets default,low] [--nice -10] [--output pulse|fake] [--json]

The real app (hypercorn, the engine, the listen page) on loopback, with a
click source (a 1 ms burst every --interval-ms) routed to an Opus sink.
Debian's headless Chromium opens the listen page and presses Listen; the
page's debug probes find where each click starts in the decoded audio. The
engine records when it emitted each click (CLOCK_MONOTONIC,
``engine.source_click_times``).

Clocks: the page's performance.now() is mapped to time.monotonic() by a
clock-sync exchange (min-RTT of 20 evaluate round trips: error < 1 ms on
loopback). What each number includes:

- ``decode`` (the headline): engine capture -> Opus encode -> RTP/SRTP ->
  loopback -> Chromium's NetEq jitter buffer and Opus decoder -> the 10 ms
  chunk the audio renderer pulls, seen on the track through
  MediaStreamTrackProcessor and stamped when it reaches the page. What the
  <audio> element plays, before the output device's buffer.
- ``render``: the same click found by an AudioWorklet
  (appliance/static/probe-worklet.js), at the start of the render quantum
  (128 frames) that held it, from getOutputTimestamp() minus outputLatency
  and baseLatency. Adds Chrome's MediaStreamAudioSourceNode FIFO.
- ``message``: when the worklet's message reached the page (upper bound
  for ``render``).
- ``speaker``: when that sample is due at the output device per
  getOutputTimestamp() (adds the output buffer; indicative only).

Chromium plays into a private PulseAudio null sink (a clocked output) unless
``--output fake``. ``--nice -10`` runs Chromium at a higher priority and the
engine's audio threads SCHED_FIFO: the same box with less contention.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from tests.e2e.conftest import Browser  # noqa: E402
from tests.support.audio_sim import PulseDaemon  # noqa: E402
from tests.web.conftest import make_config, open_server  # noqa: E402


def loadavg() -> float:
    return os.getloadavg()[0]


def graph(frame_ms: float, interval_ms: int) -> dict:
    return {
        "sources": [{"id": "clicks", "name": "Clicks", "kind": "clicks", "channels": 2,
                     "click_interval_ms": interval_ms, "tone_hz": 2000.0, "tone_dbfs": -6.0}],
        "sinks": [{"id": "main", "name": "Main", "kind": "opus", "frame_ms": frame_ms}],
        "routes": [{"id": "clicks-main", "source_id": "clicks", "sink_id": "main"}],
    }


def clock_offset(page) -> tuple[float, float]:
    """monotonic seconds = performance.now() / 1000 + offset; returns
    (offset, uncertainty in seconds)."""
    best = None
    for _ in range(20):
        t0 = time.monotonic()
        p = page.evaluate("performance.now()")
        t1 = time.monotonic()
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, (t0 + t1) / 2 - p / 1000)
    assert best is not None
    return best[1], best[0] / 2


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def measure(server, browser: Browser, mode: str, seconds: float,
                  interval_ms: int, warmup: float = 8.0) -> dict:
    """One listen session in ``mode`` ("default", "low", or a number: a
    jitterBufferTarget in ms set directly); returns latencies in ms."""

    def start(b: Browser):
        page = b.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector('.channel[data-sink="main"] button.listen')
        page.evaluate(f"applianceDebug.setLowLatency({'false' if mode == 'default' else 'true'})")
        page.click('.channel[data-sink="main"] button.listen')
        page.wait_for_selector('.channel[data-sink="main"] .state[data-state="playing"]',
                               timeout=15000)
        info = page.evaluate("applianceDebug.probe('main', 0.1)")
        info["track_probe"] = page.evaluate("applianceDebug.probeTrack('main', 0.1)")
        if mode not in ("default", "low"):
            page.evaluate(f"""() => {{ for (const r of applianceDebug.cards.get('main').player.pc
                .getReceivers()) r.jitterBufferTarget = {float(mode)}; }}""")
        page.wait_for_timeout(warmup * 1000)  # let the jitter buffer settle
        page.evaluate("applianceDebug.clicks('main')")  # drop the warm-up clicks
        page.evaluate("applianceDebug.trackClicks('main')")
        return page, info

    page, info = await browser.call(start)
    engine = server.service.engine
    window_start = time.monotonic() - 1.0  # clicks in flight when we started count
    emitted: set[float] = set()
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        emitted.update(engine.source_click_times("clicks", 256))
        await trio.sleep(1.0)
    await trio.sleep(0.5)
    emitted.update(engine.source_click_times("clicks", 256))

    def finish(b: Browser):
        offset, error = clock_offset(page)
        clicks = page.evaluate("applianceDebug.clicks('main')")
        track_clicks = page.evaluate("applianceDebug.trackClicks('main')")
        stats = page.evaluate("applianceDebug.stats('main')")
        settings = page.evaluate("applianceDebug.receiverSettings('main')")
        page.click('.channel[data-sink="main"] button.listen')
        page.close()
        return offset, error, clicks, track_clicks, stats, settings

    offset, error, clicks, track_clicks, stats, settings = await browser.call(finish)
    sent = sorted(t for t in emitted if t >= window_start - 1.0)
    out: dict = {"mode": mode, "clicks_emitted": len([t for t in sent if t >= window_start]), "clicks_detected": len(clicks),
                 "clock_sync_error_ms": error * 1000, "audio_context": info,
                 "receiver": settings, "jitter_buffer_ms": stats and stats.get("bufferMs"),
                 "jitter_buffer_target_ms": stats and stats.get("targetMs"), "stats": stats}
    for key in ("trackMs", "renderMs", "messageMs", "outputMs"):
        lat = []
        for click in (track_clicks if key == "trackMs" else clicks):
            t = click[key] / 1000 + offset
            # the newest click emitted before it arrived (interval >> latency)
            earlier = [s for s in sent if s <= t]
            if earlier and t - earlier[-1] < interval_ms / 1000:
                lat.append((t - earlier[-1]) * 1000)
        name = {"trackMs": "decode", "renderMs": "render", "messageMs": "message",
                "outputMs": "speaker"}[key]
        out[name] = {"n": len(lat), "series": [round(v, 1) for v in lat], "p50": pct(lat, 0.5), "p95": pct(lat, 0.95),
                     "min": min(lat, default=float("nan")), "max": max(lat, default=float("nan"))}
    sink = engine.sink_stats("main")
    out["engine_send_p50_ms"] = sink.send_latency_p50_ms
    out["engine_send_p95_ms"] = sink.send_latency_p95_ms
    return out


async def run(args) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        pulse = None
        if args.output == "pulse":
            pulse = PulseDaemon(Path(tmp) / "pulse")
            pulse.start()
        chromium = None
        if args.nice:
            # Chromium (every process and thread of it) at a higher priority:
            # shows how much of the latency is the box being busy
            chromium = Path(tmp) / "chromium"
            chromium.write_text(f'#!/bin/sh\nexec nice -n {args.nice} /usr/bin/chromium "$@"\n')
            chromium.chmod(chromium.stat().st_mode | stat.S_IXUSR)
        browser = Browser(Path(tmp) / "profile",
                          pulse_server=f"unix:{pulse.socket}" if pulse else None,
                          executable=str(chromium) if chromium else None)
        try:
            for frame_ms in args.frame_ms:
                config = make_config(Path(tmp) / f"state-{frame_ms}",
                                     data=graph(frame_ms, args.interval_ms))
                if args.nice:
                    config = config.replace(engine=dataclasses.replace(
                        config.engine, realtime_priority=args.realtime_priority))
                async with open_server(config) as server:
                    for mode in args.targets:
                        result = await measure(server, browser, mode, args.seconds,
                                               args.interval_ms, args.warmup)
                        result["frame_ms"] = frame_ms
                        result["loadavg_1min"] = loadavg()
                        result["cpus"] = os.cpu_count()
                        result["nice"] = args.nice
                        results.append(result)
                        if not args.json:
                            report(result)
        finally:
            browser.close()
            if pulse:
                pulse.stop()
    return results


def report(r: dict) -> None:
    label = {"default": "default", "low": "low-latency"}.get(r["mode"], f"jitterBufferTarget={r['mode']} ms")
    print(f"Opus {r['frame_ms']:g} ms frames, {label}: {r['clicks_detected']} clicks "
          f"(of {r['clicks_emitted']} emitted), clock sync ±{r['clock_sync_error_ms']:.2f} ms, "
          f"jitter buffer {r['jitter_buffer_ms'] or float('nan'):.0f} ms "
          f"(target {r['jitter_buffer_target_ms'] or float('nan'):.0f} ms), "
          f"engine capture->send p50 {r['engine_send_p50_ms']:.1f} ms, "
          f"load average {r['loadavg_1min']:.1f} on {r['cpus']} CPUs"
          + (f", Chromium at nice {r['nice']}" if r['nice'] else ""))
    for key, what in (("decode", "capture -> browser decode (track, no Web Audio)"),
                      ("render", "capture -> Web Audio render (AudioWorklet)"),
                      ("message", "capture -> worklet message on the page"),
                      ("speaker", "capture -> due at the output device")):
        s = r[key]
        print(f"  {what:47s} p50 {s['p50']:6.1f} ms  p95 {s['p95']:6.1f} ms  "
              f"(min {s['min']:.1f}, max {s['max']:.1f}, n={s['n']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval-ms", type=int, default=1000)
    parser.add_argument("--warmup", type=float, default=8.0,
                        help="seconds of playback before measuring (the jitter buffer settles)")
    parser.add_argument("--frame-ms", type=lambda s: [float(x) for x in s.split(",")],
                        default=[10.0])
    parser.add_argument("--targets", type=lambda s: s.split(","), default=["default", "low"],
                        help="default, low, or jitterBufferTarget values in ms")
    parser.add_argument("--output", choices=["pulse", "fake"], default="pulse",
                        help="Chromium's audio output: a PulseAudio null sink (clocked like a "
                             "real device) or headless Chromium's fake output")
    parser.add_argument("--nice", type=int, default=0,
                        help="run Chromium at this nice value (e.g. -10) and the engine's "
                             "audio threads at --realtime-priority: the box without contention")
    parser.add_argument("--realtime-priority", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = trio.run(run, args)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
