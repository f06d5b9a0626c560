"""The real C engine, driven through its Python face: graph changes while
audio runs, WebRTC listeners on real aiortc peers, ALSA capture and playback
through plugin PCMs, device loss and return, event delivery, shutdown."""
from __future__ import annotations

import fcntl
import math
import os
import re
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import trio

from appliance import (
    AnswerFailed, AnswerReady, CandidateGathered, DeviceLost, DeviceRestored, EngineError,
    EngineSettings, ErrorCode, LevelsMeasured, ListenerState, ListenerStateChanged,
    RouteSpec, SinkSpec, SourceSpec, live_engine_threads, open_engine,
)
from appliance.engine import abandoned_engine_threads
from appliance.model import Variant
from appliance.engine import Engine, Listener

from support.audio_sim import (
    PulseDaemon, read_wav, tone, use_asoundrc, write_raw_s32, write_wav,
)
from support.polling import poll_until
from support.webrtc import (
    dominant_frequency, open_aiortc_listener, rms_dbfs, synthetic_offer,
)

RATE = 48000
LOOPBACK = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=20)


def process_threads() -> int:
    """Threads of this process, less trio's worker-thread cache (it keeps
    idle workers for a while by design): the engine's and GStreamer's own,
    and the test's."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue   # it just ended
        count += not name.startswith("Trio thread")
    return count


@pytest.fixture
async def engine():
    async with open_engine(LOOPBACK) as e:
        yield e


async def next_event(engine: Engine, kind, where=lambda ev: True, timeout: float = 5.0):
    """The next event of a kind (and matching `where`), skipping others."""
    with trio.fail_after(timeout):
        async for ev in engine.events:
            if isinstance(ev, kind) and where(ev):
                return ev
    raise AssertionError("the event channel closed")


# A route's gain change ramps over one mixer frame or so: leave it this long.
SETTLE_S = 0.05


async def levels_of(engine: Engine, kind: str, entity_id: str, count: int = 2):
    """Average peak of one entity over level events that measured only audio
    mixed after this call (plus SETTLE_S): what was measured before a change,
    however late its event is read, is never part of it."""
    changed_at = time.monotonic() + SETTLE_S
    peaks = []
    while len(peaks) < count:
        ev = await next_event(engine, LevelsMeasured,
                              lambda e: e.kind == kind and e.entity_id == entity_id
                              and e.since > changed_at)
        peaks.append(max(ev.peak_dbfs))
    return sum(peaks) / count


async def tone_graph(engine: Engine, hz: float = 1000.0, dbfs: float = -12.0) -> None:
    await engine.add_source("tone", SourceSpec(kind="tone", tone_hz=hz, tone_dbfs=dbfs))
    await engine.add_sink("main", SinkSpec(kind="opus"))
    await engine.add_route("tone-main", RouteSpec("tone", "main"))


async def first_answer(listener: Listener, timeout: float = 5.0):
    """The listener's AnswerReady or AnswerFailed (its first event)."""
    with trio.fail_after(timeout):
        async for ev in listener.events:
            if isinstance(ev, (AnswerReady, AnswerFailed)):
                return ev
    raise AssertionError("the listener's channel closed")


async def connect(engine: Engine, peer, sink_id: str = "main",
                  offer: str | None = None) -> Listener:
    """Answer a peer's offer through the engine and wait until it is up."""
    listener = engine.start_listener(sink_id, offer or await peer.create_offer())
    answer = await first_answer(listener)
    assert isinstance(answer, AnswerReady), answer
    await peer.accept_answer(answer.sdp)
    await peer.wait_connected(timeout=10)
    return listener


# ---- graph ----------------------------------------------------------------------


@pytest.mark.trio
async def test_graph_changes_while_running(engine):
    await tone_graph(engine, dbfs=-12.0)
    assert abs(await levels_of(engine, "sink", "main") - -12.0) < 0.2

    engine.update_route("tone-main", gain_db=-6.0)
    assert abs(await levels_of(engine, "sink", "main") - -18.0) < 0.2

    engine.update_route("tone-main", muted=True)
    assert await levels_of(engine, "sink", "main") < -150

    # A second source into the same sink mixes in; a second sink runs alongside.
    engine.update_route("tone-main", muted=False, gain_db=0.0)
    await engine.add_source("tone2", SourceSpec(kind="tone", tone_hz=1000.0, tone_dbfs=-12.0))
    await engine.add_sink("other", SinkSpec(kind="opus", channels=1, frame_ms=20))
    await engine.add_route("tone2-other", RouteSpec("tone2", "other"))
    assert abs(await levels_of(engine, "sink", "other") - -12.0) < 0.2
    engine.set_tone("tone2", 1000.0, -20.0)
    assert abs(await levels_of(engine, "sink", "other") - -20.0) < 0.2

    before = engine.sink_stats("main").frames_encoded
    await engine.remove_route("tone-main")
    assert await levels_of(engine, "sink", "main") < -150   # silence, still on time
    assert engine.sink_stats("main").frames_encoded > before
    assert engine.stats().routes == 1

    with pytest.raises(EngineError) as err:
        await engine.remove_source("tone2")
    assert err.value.code == ErrorCode.BUSY
    await engine.remove_route("tone2-other")
    for source in ("tone", "tone2"):
        await engine.remove_source(source)
    for sink in ("main", "other"):
        await engine.remove_sink(sink)
    stats = engine.stats()
    assert (stats.sources, stats.sinks, stats.routes, stats.listeners) == (0, 0, 0, 0)


@pytest.mark.trio
async def test_sink_encodes_in_real_time_without_listeners(engine):
    await tone_graph(engine)
    start = engine.sink_stats("main").frames_encoded
    t0 = trio.current_time()
    await trio.sleep(1.0)
    frames = engine.sink_stats("main").frames_encoded - start
    elapsed = trio.current_time() - t0
    assert abs(frames - elapsed * 100) <= 3, frames


# ---- WebRTC listeners ------------------------------------------------------------


@pytest.mark.trio
async def test_tone_reaches_a_real_webrtc_peer(engine):
    await tone_graph(engine, hz=1000.0)
    async with open_aiortc_listener() as peer:
        listener = await connect(engine, peer)
        samples = await peer.record(seconds=1.0)
        assert abs(dominant_frequency(samples) - 1000.0) < 2.0
        assert abs(rms_dbfs(samples) - -15.0) < 1.5   # -12 dBFS peak sine
        stats = listener.stats()
        assert stats.state.is_live and stats.packets_sent > 50
        assert stats.last_rx_age_s is not None and stats.last_rx_age_s < 5
        sink = engine.sink_stats("main")
        assert sink.listeners == 1 and sink.send_latency_samples > 0
        await listener.aclose()
    assert engine.stats().listeners == 0
    assert engine.sink_stats("main").listeners == 0


@pytest.mark.trio
async def test_listeners_with_different_payload_types_share_one_encoder(engine):
    """aiortc offers Opus as PT 96 and Chromium as 111: each listener gets its
    own payloader after the one shared encoder, so both hear the stream."""
    await tone_graph(engine, hz=880.0)
    async with open_aiortc_listener() as a, open_aiortc_listener() as b:
        offer_b = chromium_like(with_opus_pt(await b.create_offer(), 96, 111), 111)
        listener_a = await connect(engine, a)
        listener_b = await connect(engine, b, offer=offer_b)
        for peer in (a, b):
            samples = await peer.record(seconds=0.5)
            assert abs(dominant_frequency(samples) - 880.0) < 3.0
        # One encoder: each frame it encodes goes out to both listeners. Two
        # encoders would send each of theirs to one (a ratio of 1, not 2). Not
        # frames per wall-clock second: emulated, the encoder lags, then bursts.
        start = engine.sink_stats("main")
        now = await poll_until(lambda: (s := engine.sink_stats("main")).frames_encoded
                               - start.frames_encoded >= 100 and s, 10, "100 frames encoded")
        ratio = (now.packets_out - start.packets_out) / (now.frames_encoded - start.frames_encoded)
        assert 1.8 <= ratio <= 2.2, ratio
        await listener_a.aclose()
        samples = await b.record(seconds=0.3)   # the other one carries on
        assert abs(dominant_frequency(samples) - 880.0) < 5.0
        await listener_b.aclose()
    assert engine.stats().listeners == 0


def with_opus_pt(offer: str, old: int, new: int) -> str:
    """The offer with Opus on payload type ``new``: its m-line's format and
    its rtpmap only (a plain replace of "96" also hit fingerprints, ports and
    priorities now and then, and that offer's DTLS never came up)."""
    offer = re.sub(rf"^(m=audio \S+ \S+(?: \d+)*) {old}\b", rf"\1 {new}", offer, flags=re.M)
    return offer.replace(f"a=rtpmap:{old} ", f"a=rtpmap:{new} ")


def chromium_like(offer: str, pt: int, fmtp: str = "minptime=10;useinbandfec=1") -> str:
    """The offer with Opus parameters as a browser sends them."""
    line = f"a=rtpmap:{pt} opus/48000/2"
    assert line in offer
    return offer.replace(line, f"{line}\r\na=fmtp:{pt} {fmtp}")


@pytest.mark.trio
@pytest.mark.parametrize("channels, fmtp", [
    (2, "minptime=10;useinbandfec=1"),                        # Chromium
    (1, "maxplaybackrate=48000;stereo=1;useinbandfec=1"),     # Firefox, to a mono sink
])
async def test_browser_opus_parameters_are_answered_not_refused(engine, channels, fmtp):
    """webrtcbin answers a=inactive (connected, silent) when our codec
    parameters differ from the offer's; the engine must take the offer's."""
    await engine.add_source("tone", SourceSpec(kind="tone", tone_hz=660.0))
    await engine.add_sink("main", SinkSpec(kind="opus", channels=channels))
    await engine.add_route("r", RouteSpec("tone", "main"))
    async with open_aiortc_listener() as peer:
        offer = chromium_like(await peer.create_offer(), 96, fmtp)
        listener = engine.start_listener("main", offer)
        answer = await first_answer(listener)
        assert isinstance(answer, AnswerReady), answer
        assert "a=sendonly" in answer.sdp and "a=inactive" not in answer.sdp
        assert "useinbandfec=1" in answer.sdp
        await peer.accept_answer(answer.sdp)
        await peer.wait_connected(timeout=10)
        samples = await peer.record(seconds=0.5)
        assert abs(dominant_frequency(samples) - 660.0) < 3.0
        await listener.aclose()


@pytest.mark.trio
async def test_a_listener_that_never_connects_stalls_nobody(engine):
    """webrtcbin holds media back until DTLS is up; a peer that never comes
    must not hold back the tee, and so every other listener."""
    await tone_graph(engine)
    async with open_aiortc_listener() as peer:
        listener = await connect(engine, peer)
        dead = [engine.start_listener("main", synthetic_offer()) for _ in range(3)]
        for d in dead:
            assert isinstance(await first_answer(d), AnswerReady)
        before = peer.packets_received
        samples = await peer.record(seconds=1.0)
        assert peer.packets_received - before >= 90
        assert abs(dominant_frequency(samples) - 1000.0) < 2.0
        with trio.fail_after(1):   # nothing wedged: removal is immediate
            for d in dead:
                await d.aclose()
        await listener.aclose()


@pytest.mark.trio
async def test_listener_events_arrive_in_order(engine):
    await tone_graph(engine)
    async with open_aiortc_listener() as peer:
        listener = engine.start_listener("main", await peer.create_offer())
        seen = []
        with trio.fail_after(10):
            async for ev in listener.events:
                assert ev.listener_id == listener.id
                seen.append(ev)
                if isinstance(ev, AnswerReady):
                    await peer.accept_answer(ev.sdp)
                if isinstance(ev, ListenerStateChanged) and ev.state.is_live:
                    break
        answers = [i for i, ev in enumerate(seen) if isinstance(ev, AnswerReady)]
        assert len(answers) == 1
        states = [ev.state for ev in seen if isinstance(ev, ListenerStateChanged)]
        assert states[0] == ListenerState.CHECKING and states[-1].is_live
        assert all(not s.is_final for s in states)
        assert not any(isinstance(ev, AnswerFailed) for ev in seen)
        await listener.aclose()


@pytest.mark.trio
async def test_remote_candidates_can_trickle(engine):
    await tone_graph(engine)
    async with open_aiortc_listener() as peer:
        offer = await peer.create_offer(trickle=True)
        assert "a=candidate" not in offer
        listener = engine.start_listener("main", offer)
        answer = await first_answer(listener)
        assert "a=candidate:" in answer.sdp and "a=end-of-candidates" in answer.sdp
        for _mid, candidate in peer.candidates:
            listener.add_candidate(0, candidate)
        listener.add_candidate(0, "")   # end of candidates
        await peer.accept_answer(answer.sdp)
        await peer.wait_connected(timeout=10)
        samples = await peer.record(seconds=0.3)
        assert abs(dominant_frequency(samples) - 1000.0) < 5.0
        await listener.aclose()


@pytest.mark.trio
@pytest.mark.parametrize("offer, reason", [
    ("", "empty"),
    ("hello world", "not SDP"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no audio"),
    (synthetic_offer().replace("a=recvonly", "a=sendonly"), "sendonly"),
    (synthetic_offer(payload_type=0, opus=False), "Opus"),
    (synthetic_offer().replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "DTLS"),
    ("\n".join(line for line in synthetic_offer().splitlines() if "ice-pwd" not in line), "ICE"),
    ("v=0\r\n" + "a=" + "x" * 100000 + "\r\n", "no audio"),
])
async def test_bad_offers_are_refused_with_a_reason(engine, offer, reason):
    await tone_graph(engine)
    with pytest.raises(EngineError) as err:
        engine.start_listener("main", offer)
    assert err.value.code == ErrorCode.SDP
    assert reason.lower() in err.value.message.lower()
    assert engine.stats().listeners == 0


@pytest.mark.trio
async def test_bad_calls_raise_and_the_engine_carries_on(engine, tmp_path):
    await tone_graph(engine)
    cases = [
        (lambda: engine.add_source("x", SourceSpec(kind="alsa", device="no-such-device")),
         ErrorCode.DEVICE),
        (lambda: engine.add_source("x", SourceSpec(kind="file", path=str(tmp_path / "missing.wav"))),
         ErrorCode.FILE),
        (lambda: engine.add_source("x", SourceSpec(kind="tone", channels=-1)), ErrorCode.INVALID),
        (lambda: engine.add_source("x", SourceSpec(kind="tone", channels=9)), ErrorCode.INVALID),
        (lambda: engine.add_source("x", SourceSpec(kind="tone", tone_hz=30000)), ErrorCode.INVALID),
        (lambda: engine.add_source("x", SourceSpec(kind="laser")), ErrorCode.INVALID),
        (lambda: engine.add_sink("x", SinkSpec(kind="opus", frame_ms=7)), ErrorCode.INVALID),
        (lambda: engine.add_sink("x", SinkSpec(kind="opus", channels=6)), ErrorCode.INVALID),
        (lambda: engine.add_sink("x", SinkSpec(kind="opus", bitrate=5)), ErrorCode.INVALID),
        (lambda: engine.add_sink("x", SinkSpec(kind="alsa", device="no-such-device")), ErrorCode.DEVICE),
        (lambda: engine.add_source("tone", SourceSpec(kind="tone")), ErrorCode.EXISTS),
        (lambda: engine.add_route("r", RouteSpec("nope", "main")), ErrorCode.NOT_FOUND),
        (lambda: engine.add_route("r", RouteSpec("tone", "main", gain_db=math.inf)), ErrorCode.INVALID),
        (lambda: engine.add_route("r", RouteSpec("tone", "main", source_channel=3)), ErrorCode.INVALID),
        (lambda: engine.remove_sink("nope"), ErrorCode.NOT_FOUND),
    ]
    for index, (call, code) in enumerate(cases):
        with pytest.raises(EngineError) as err:
            await call()
            pytest.fail(f"case {index} did not raise")
        assert err.value.code == code, (index, err.value, code)
        assert err.value.message
    wav = tmp_path / "44k.wav"
    write_wav(wav, tone(440, 0.1), rate=44100)
    with pytest.raises(EngineError, match="44100 Hz"):
        await engine.add_source("x", SourceSpec(kind="file", path=str(wav)))
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.raises(EngineError) as err:
        await engine.add_source("x", SourceSpec(kind="file", path=str(tmp_path / "junk.wav")))
    assert err.value.code == ErrorCode.FILE
    listener = engine.start_listener("main", synthetic_offer())
    with pytest.raises(EngineError) as err:
        listener.add_candidate(0, "not a candidate")
    assert err.value.code == ErrorCode.INVALID
    await listener.aclose()
    await listener.aclose()  # twice is harmless: cleanup paths may overlap
    with pytest.raises(EngineError) as err:
        listener.add_candidate(0, "candidate:1 1 udp 1 127.0.0.1 9 typ host")
    assert err.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(EngineError) as err:
        engine.start_listener("tone", synthetic_offer())
    assert err.value.code == ErrorCode.NOT_FOUND
    # Still working after all that.
    assert abs(await levels_of(engine, "sink", "main") - -12.0) < 0.2
    assert engine.stats().listeners == 0 and engine.stats().sources == 1


@pytest.mark.trio
async def test_listener_cap():
    async with open_engine(EngineSettings(ice_addresses=("127.0.0.1",), max_listeners=2)) as e:
        await tone_graph(e)
        first = [e.start_listener("main", synthetic_offer()) for _ in range(2)]
        with pytest.raises(EngineError) as err:
            e.start_listener("main", synthetic_offer())
        assert err.value.code == ErrorCode.LIMIT
        await first[0].aclose()
        e.start_listener("main", synthetic_offer())


# ---- ALSA capture and playback ---------------------------------------------------


@pytest.mark.trio
async def test_capture_from_a_clockless_alsa_pcm_runs_in_real_time(monkeypatch, tmp_path):
    """A file-backed capture PCM returns data as fast as it is read; the
    engine must pace it, and what it reads must be what is in the file."""
    raw = tmp_path / "in.raw"
    write_raw_s32(raw, tone(700, 20.0, dbfs=-6.0))
    out = tmp_path / "out.wav"
    use_asoundrc(monkeypatch, tmp_path / "asoundrc",
                 f'pcm.filecap {{ type file slave.pcm "null" file "/dev/null" '
                 f'infile "{raw}" format "raw" }}\n'
                 f'pcm.rawout {{ type file slave.pcm "null" file "{out}" format "wav" }}\n'
                 f'pcm.fileout {{ type plug slave {{ pcm "rawout" format S16_LE }} }}\n')
    async with open_engine(LOOPBACK) as e:
        await e.add_source("line", SourceSpec(kind="alsa", device="filecap", period_frames=64))
        await e.add_sink("main", SinkSpec(kind="opus"))
        await e.add_sink("speaker", SinkSpec(kind="alsa", device="fileout"))
        await e.add_route("line-main", RouteSpec("line", "main"))
        await e.add_route("line-speaker", RouteSpec("line", "speaker"))
        assert abs(await levels_of(e, "source", "line") - -6.0) < 0.3
        start = e.sink_stats("main").frames_encoded
        t0 = trio.current_time()
        await trio.sleep(1.0)
        frames = e.sink_stats("main").frames_encoded - start
        assert abs(frames - (trio.current_time() - t0) * 100) <= 5, frames
        async with open_aiortc_listener() as peer:
            listener = await connect(e, peer)
            samples = await peer.record(seconds=0.5)
            assert abs(dominant_frequency(samples) - 700.0) < 3.0
            await listener.aclose()
        await e.remove_route("line-speaker")
        await e.remove_sink("speaker")
    played, rate = read_wav(out)
    assert rate == 48000 and len(played) > 48000
    assert abs(dominant_frequency(played[4800:]) - 700.0) < 2.0


@pytest.mark.trio
async def test_file_source_plays(engine, tmp_path):
    wav = tmp_path / "music.wav"
    write_wav(wav, tone(523.25, 0.5, dbfs=-3.0))
    await engine.add_source("music", SourceSpec(kind="file", path=str(wav)))
    await engine.add_sink("main", SinkSpec(kind="opus"))
    await engine.add_route("r", RouteSpec("music", "main"))
    assert abs(await levels_of(engine, "source", "music") - -3.0) < 0.3
    async with open_aiortc_listener() as peer:
        listener = await connect(engine, peer)
        samples = await peer.record(seconds=1.0)   # longer than the file: it loops
        assert abs(dominant_frequency(samples) - 523.25) < 3.0
        await listener.aclose()


@pytest.mark.trio
async def test_raw_file_source_plays(engine, tmp_path):
    raw = tmp_path / "take.raw"   # headerless S16LE at the engine's rate
    raw.write_bytes((tone(300.0, 0.5, dbfs=-9.0) * 32767).astype("<i2").tobytes())
    await engine.add_source("take", SourceSpec(kind="file", path=str(raw)))
    await engine.add_sink("main", SinkSpec(kind="opus"))
    await engine.add_route("r", RouteSpec("take", "main"))
    assert abs(await levels_of(engine, "source", "take") - -9.0) < 0.3


@pytest.mark.trio
async def test_device_loss_keeps_listeners_fed_and_recovers(monkeypatch, tmp_path):
    pulse = PulseDaemon(tmp_path / "pulse", sine_hz=700)
    pulse.start()
    try:
        use_asoundrc(monkeypatch, tmp_path / "asoundrc", pulse.asoundrc())
        async with open_engine(LOOPBACK) as e:
            await e.add_source("hat", SourceSpec(kind="alsa", device="hatin"))
            await e.add_sink("main", SinkSpec(kind="opus"))
            await e.add_route("r", RouteSpec("hat", "main"))
            async with open_aiortc_listener() as peer:
                listener = await connect(e, peer)
                samples = await peer.record(seconds=0.5)
                assert abs(dominant_frequency(samples) - 700.0) < 3.0

                pulse.stop()  # the HAT is gone
                lost = await next_event(e, DeviceLost, timeout=5)
                assert (lost.kind, lost.entity_id) == ("source", "hat") and lost.reason
                frames = e.sink_stats("main").frames_encoded
                received = peer.packets_received
                quiet = await peer.record(seconds=0.5)   # silence, on time
                assert rms_dbfs(quiet[-RATE // 4:]) < -60   # (after what was in flight)
                assert e.sink_stats("main").frames_encoded - frames >= 45
                assert peer.packets_received - received >= 45
                assert listener.stats().state.is_live

                pulse.start()  # and back
                restored = await next_event(e, DeviceRestored, timeout=10)
                assert restored.entity_id == "hat"
                samples = await peer.record(seconds=0.5)
                assert abs(dominant_frequency(samples) - 700.0) < 3.0
                await listener.aclose()
    finally:
        pulse.stop()


@pytest.mark.trio
async def test_absent_device_is_retried_until_it_appears(monkeypatch, tmp_path):
    pulse = PulseDaemon(tmp_path / "pulse", sine_hz=600)
    use_asoundrc(monkeypatch, tmp_path / "asoundrc", pulse.asoundrc())
    try:
        async with open_engine(LOOPBACK) as e:
            await e.add_source("hat", SourceSpec(kind="alsa", device="hatin", allow_absent=True))
            await e.add_sink("main", SinkSpec(kind="opus"))
            await e.add_route("r", RouteSpec("hat", "main"))
            await next_event(e, DeviceLost)
            pulse.start()
            await next_event(e, DeviceRestored, timeout=10)
            assert abs(await levels_of(e, "source", "hat") - -6.0) < 1.0
    finally:
        pulse.stop()


def device_threads(name: str) -> int:
    """Threads of this process named ``name`` (one may end while we look)."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            count += (Path("/proc/self/task") / tid / "comm").read_text().strip() == name
        except FileNotFoundError:
            continue
    return count


@pytest.mark.trio
async def test_a_device_stuck_in_its_driver_does_not_hold_the_close(monkeypatch, tmp_path):
    """A playback PCM whose driver never returns (here: ALSA's file plugin
    writing into a pipe nobody reads): removing its sink gives up on the
    thread after a bound, instead of waiting for ever, and the thread, when
    the driver lets it go at last, leaves without touching what was freed."""
    fifo = tmp_path / "stuck"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # there, but never reads
    use_asoundrc(monkeypatch, tmp_path / "asoundrc",
                 f'pcm.stuck {{ type file slave.pcm "null" file "{fifo}" format "raw" }}\n')
    try:
        async with open_engine(LOOPBACK) as e:
            await e.add_source("tone", SourceSpec(kind="tone", tone_hz=440))
            await e.add_sink("speaker", SinkSpec(kind="alsa", device="stuck"))
            await e.add_route("r", RouteSpec("tone", "speaker"))
            await poll_until(lambda: int.from_bytes(fcntl.ioctl(reader, termios.FIONREAD, b"\0" * 4),
                                                    "little") >= 65536,
                             10, "a full pipe (the next write blocks)")
            await e.remove_route("r")
            live, abandoned = live_engine_threads(), abandoned_engine_threads()
            with trio.fail_after(10):
                await e.remove_sink("speaker")
            assert abandoned_engine_threads() == abandoned + 1
            assert live_engine_threads() == live - 1
            assert device_threads("ae-playback") == 1   # still stuck in the write
    finally:
        os.close(reader)   # the write fails (EPIPE) and the thread leaves
    with trio.fail_after(10):
        while device_threads("ae-playback"):
            await trio.sleep(0.02)
    assert live_engine_threads() == 0


# ---- events and shutdown -----------------------------------------------------------


@pytest.mark.trio
async def test_close_during_an_event_storm_leaves_nothing_behind():
    """Level events every millisecond from many entities, a consumer that
    never reads, listeners being added: closing must not deadlock."""
    threads_before = process_threads()
    settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=1, event_buffer=4)
    with trio.fail_after(20):
        async with open_engine(settings) as e:
            for i in range(12):
                await e.add_source(f"s{i}", SourceSpec(kind="tone", tone_hz=200 + 50 * i))
                await e.add_sink(f"k{i}", SinkSpec(kind="opus"))
                await e.add_route(f"r{i}", RouteSpec(f"s{i}", f"k{i}"))
            with trio.move_on_after(0.3):   # a flood, read as fast as it comes
                async for _ in e.events:
                    pass
            stats = e.stats()
            assert stats.events_posted + stats.events_coalesced > 500
            # Now nobody reads: the channel fills and the event thread waits.
            for i in range(12):
                e.start_listener(f"k{i}", synthetic_offer())   # their events pile up too
            await trio.sleep(0.2)
    assert live_engine_threads() == 0
    await wait_for_threads(threads_before)


@pytest.mark.trio
async def test_close_with_lifecycle_events_waiting_for_room(monkeypatch, tmp_path):
    """A full channel makes the event thread wait (lifecycle events are never
    dropped); closing must release it rather than wait for a reader."""
    pulse = PulseDaemon(tmp_path / "pulse")
    use_asoundrc(monkeypatch, tmp_path / "asoundrc", pulse.asoundrc())
    settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1, event_buffer=1)
    with trio.fail_after(20):
        async with open_engine(settings) as e:
            for i in range(4):   # absent devices: a DeviceLost each, nobody reading
                await e.add_source(f"hat{i}", SourceSpec(kind="alsa", device="hatin",
                                                         allow_absent=True))
            await poll_until(lambda: e.stats().events_posted >= 4, 5, "4 events posted")
    assert live_engine_threads() == 0


@pytest.mark.trio
async def test_lifecycle_events_are_never_dropped():
    settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1, event_buffer=1)
    async with open_engine(settings) as e:
        await tone_graph(e)
        listeners = [e.start_listener("main", synthetic_offer()) for _ in range(8)]
        for listener in listeners:   # each has its own channel: nothing crowds it out
            assert isinstance(await first_answer(listener, timeout=10), AnswerReady)
        for listener in listeners:
            await listener.aclose()
        assert e.stats().listeners == 0


@pytest.mark.trio
async def test_no_event_for_a_listener_after_it_is_removed(engine):
    await tone_graph(engine)
    listeners = [engine.start_listener("main", synthetic_offer()) for _ in range(10)]
    for listener in listeners:
        await listener.aclose()
    # The engine's channel never carries listener events, and a removed
    # listener's own channel is closed: nothing can arrive for it.
    for listener in listeners:
        assert listener.id not in engine.listeners()
        with pytest.raises((trio.EndOfChannel, trio.WouldBlock)):
            while True:
                listener.events.receive_nowait()
    with trio.move_on_after(1.0):
        async for ev in engine.events:
            assert not isinstance(ev, (AnswerReady, AnswerFailed, CandidateGathered,
                                       ListenerStateChanged)), ev


def test_callbacks_after_the_trio_run_ended_are_swallowed():
    """An engine left open past the end of its trio run keeps posting level
    events; they must be dropped quietly and the engine must still close."""
    from appliance._native import lib

    async def start():
        e = Engine(EngineSettings(level_interval_ms=5))
        e._create()
        await e.add_source("tone", SourceSpec(kind="tone"))
        await e.add_sink("main", SinkSpec(kind="opus"))
        await e.add_route("r", RouteSpec("tone", "main"))
        return e

    e = trio.run(start)
    time.sleep(0.2)                           # events arrive with no run to take them
    assert lib.ae_engine_destroy(e._handle) == 0
    assert live_engine_threads() == 0


async def wait_for_threads(baseline: int, timeout: float = 10.0) -> None:
    """GStreamer's own worker threads wind down shortly after the engine
    closes: wait for the process to come back to where it started."""
    await poll_until(lambda: process_threads() <= baseline, timeout,
                     f"threads back to {baseline}", interval=0.05)


@pytest.mark.trio
async def test_no_threads_or_listeners_left_after_many_listeners():
    baseline = process_threads()
    async with open_engine(LOOPBACK) as e:
        await tone_graph(e)
        async with open_aiortc_listener() as peer:
            listener = await connect(e, peer)
            await peer.record(seconds=0.2)
            others = [e.start_listener("main", synthetic_offer()) for _ in range(20)]
            await listener.aclose()
        for other in others:
            await other.aclose()
        assert e.stats().listeners == 0
    assert live_engine_threads() == 0
    await wait_for_threads(baseline)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.trio
async def test_listeners_leave_no_file_descriptors_or_threads_behind(engine):
    """Each listener opens ICE sockets and starts threads; all of them must go
    with it, round after round (a dropped-but-unreffed bus message once kept 4
    sockets per listener alive)."""
    await tone_graph(engine)

    async def round_of(n: int) -> None:
        listeners = [engine.start_listener("main", synthetic_offer()) for _ in range(n)]
        for listener in listeners:   # answered: webrtcbin has opened its sockets and threads
            await first_answer(listener)
        for listener in listeners:
            await listener.aclose()

    await round_of(5)                     # first use loads plugins, certificates
    fds, threads = open_fds(), process_threads()
    for _ in range(3):
        await round_of(20)
        assert open_fds() == fds
        await wait_for_threads(threads)
    assert engine.stats().listeners == 0



@pytest.mark.trio
async def test_an_engine_closed_at_once_after_opening_never_hangs():
    """A quit sent before the glib thread entered its loop was forgotten and
    the close waited forever (seen twice in ten runs of a fast test)."""
    with trio.fail_after(30):
        for _ in range(200):
            async with open_engine(LOOPBACK):
                pass
    assert live_engine_threads() == 0


# ---- hearing variants and the alignment delay --------------------------------------

async def channel_levels(engine: Engine, sink_id: str, count: int = 4, settle: float = 0.2):
    """(peak dBFS of the loudest window, mean RMS dBFS) per channel of one
    sink, over level events that measured only audio mixed after ``settle``
    seconds from now (filters and envelopes settle meanwhile)."""
    after = time.monotonic() + settle
    events = []
    while len(events) < count:
        events.append(await next_event(engine, LevelsMeasured,
                                       lambda e: e.kind == "sink" and e.entity_id == sink_id
                                       and e.since > after))
    channels = len(events[0].rms_dbfs)
    peak = tuple(max(e.peak_dbfs[c] for e in events) for c in range(channels))
    rms = tuple(sum(e.rms_dbfs[c] for e in events) / count for c in range(channels))
    return peak, rms


@pytest.mark.trio
async def test_mono_variant_gives_both_ears_the_same(engine, tmp_path):
    left_only = tone(1000.0, 1.0, dbfs=-12.0)
    left_only[:, 1] = 0
    write_wav(tmp_path / "left.wav", left_only)
    await engine.add_source("left", SourceSpec(kind="file", path=str(tmp_path / "left.wav")))
    await engine.add_sink("main", SinkSpec(kind="opus"))
    await engine.add_route("r", RouteSpec("left", "main"))
    await engine.add_variant("main~mono", "main", Variant(mono=True))
    peak, rms = await channel_levels(engine, "main")
    assert rms[0] > -16 and rms[1] < -100            # the channel itself: left only
    peak, rms = await channel_levels(engine, "main~mono")
    assert peak[0] == pytest.approx(peak[1], abs=0.01)
    assert rms[0] == pytest.approx(rms[1], abs=0.01)
    assert rms[0] == pytest.approx(-15.0 - 6.02, abs=0.3)   # (left + right) / 2


@pytest.mark.trio
async def test_balance_attenuates_one_side_by_the_expected_amount(engine):
    await tone_graph(engine)
    await engine.add_variant("main~right", "main", Variant(balance=50))
    await engine.add_variant("main~left", "main", Variant(balance=-75))
    _, rms = await channel_levels(engine, "main~right")
    assert rms[0] - rms[1] == pytest.approx(20 * math.log10(0.5), abs=0.05)
    assert rms[1] == pytest.approx(-15.0, abs=0.2)            # the other side as it was
    _, rms = await channel_levels(engine, "main~left")
    assert rms[1] - rms[0] == pytest.approx(20 * math.log10(0.25), abs=0.05)


@pytest.mark.trio
async def test_clear_speech_cuts_rumble_lifts_speech_and_never_clips(engine):
    await engine.add_source("tone", SourceSpec(kind="tone", tone_hz=100.0, tone_dbfs=-20.0))
    await engine.add_sink("main", SinkSpec(kind="opus"))
    await engine.add_route("r", RouteSpec("tone", "main"))
    await engine.add_variant("main~clear", "main", Variant(clear=True))
    _, plain = await channel_levels(engine, "main")
    _, clear = await channel_levels(engine, "main~clear")
    assert clear[0] < plain[0] - 10                       # 100 Hz: rumble, not speech
    # a quiet talker at 1 kHz comes up
    engine.set_tone("tone", 1000.0, -36.0)
    _, plain = await channel_levels(engine, "main")
    _, clear = await channel_levels(engine, "main~clear")
    assert clear[0] > plain[0] + 6
    # a mix driven into clipping: the variant stays below full scale
    engine.set_tone("tone", 2500.0, -1e-9)
    engine.update_route("r", gain_db=12.0)
    peak, _ = await channel_levels(engine, "main")
    assert peak[0] > -0.01
    peak, rms = await channel_levels(engine, "main~clear")
    assert max(peak) <= -0.9 and rms[0] > -12


@pytest.mark.trio
async def test_a_variant_follows_its_parents_routes_and_holds_the_parent(engine):
    await engine.add_source("tone", SourceSpec(kind="tone"))
    await engine.add_sink("main", SinkSpec(kind="opus", channels=1))
    await engine.add_variant("main~mono", "main", Variant(mono=True, balance=-25))
    _, rms = await channel_levels(engine, "main~mono", count=2, settle=0.05)
    assert max(rms) < -100                            # nothing routed yet
    await engine.add_route("r", RouteSpec("tone", "main"))
    _, rms = await channel_levels(engine, "main~mono", count=2, settle=0.05)
    assert rms[0] == pytest.approx(-15.0, abs=0.2)    # a mono parent reaches both ears
    assert rms[1] == pytest.approx(-15.0 + 20 * math.log10(0.75), abs=0.2)
    engine.update_route("r", muted=True)
    _, rms = await channel_levels(engine, "main~mono", count=2, settle=0.05)
    assert max(rms) < -100
    await engine.remove_route("r")
    with pytest.raises(EngineError) as busy:
        await engine.remove_sink("main")
    assert busy.value.code == ErrorCode.BUSY
    with pytest.raises(EngineError) as bad:
        await engine.add_variant("v2", "main~mono", Variant(mono=True))
    assert bad.value.code == ErrorCode.INVALID         # no variant of a variant
    with pytest.raises(EngineError) as bad:
        engine.set_sink_delay("main~mono", 100)
    assert bad.value.code == ErrorCode.INVALID         # delayed with its parent only
    for wrong in (-1, 501, 2**40, True, 1.5):
        with pytest.raises(EngineError) as bad:
            engine.set_sink_delay("main", wrong)
        assert bad.value.code == ErrorCode.INVALID
    with pytest.raises(EngineError):
        await engine.add_variant("v3", "main", Variant(balance=101))
    await engine.remove_sink("main~mono")
    await engine.remove_sink("main")
    assert engine.stats().sinks == 0


async def first_loud(engine: Engine, sink_ids: set[str], after: float) -> dict[str, float]:
    """When each sink's first level window with sound in it began."""
    found: dict[str, float] = {}
    with trio.fail_after(5):
        async for ev in engine.events:
            if isinstance(ev, LevelsMeasured) and ev.kind == "sink" \
                    and ev.entity_id in sink_ids - found.keys() and ev.since > after - 0.05 \
                    and max(ev.peak_dbfs) > -40:
                found[ev.entity_id] = ev.since
                if found.keys() == sink_ids:
                    return found
    raise AssertionError("the event channel closed")


@pytest.mark.trio
async def test_alignment_delay_delays_the_sink_and_its_variants():
    async with open_engine(EngineSettings(ice_addresses=("127.0.0.1",),
                                          level_interval_ms=5)) as engine:
        await engine.add_source("tone", SourceSpec(kind="tone", tone_dbfs=-120.0))
        await engine.add_sink("near", SinkSpec(kind="opus"))
        await engine.add_sink("far", SinkSpec(kind="opus", delay_ms=200))
        await engine.add_variant("far~mono", "far", Variant(mono=True))
        for sink in ("near", "far"):
            await engine.add_route(sink, RouteSpec("tone", sink))
        # silence first, long enough to fill the delay line with it
        filled = time.monotonic() + 0.25
        await next_event(engine, LevelsMeasured, lambda e: e.entity_id == "far"
                         and e.since > filled)
        stepped = time.monotonic()
        engine.set_tone("tone", 1000.0, -12.0)
        loud = await first_loud(engine, {"near", "far", "far~mono"}, stepped)
        assert loud["near"] - stepped < 0.05
        assert loud["far"] - loud["near"] == pytest.approx(0.200, abs=0.03)
        assert loud["far~mono"] == pytest.approx(loud["far"], abs=0.02)
        # changed live: down to 50 ms, then off
        engine.set_tone("tone", 1000.0, -120.0)
        engine.set_sink_delay("far", 50)
        filled = time.monotonic() + 0.1
        await next_event(engine, LevelsMeasured, lambda e: e.entity_id == "far"
                         and e.since > filled)
        stepped = time.monotonic()
        engine.set_tone("tone", 1000.0, -12.0)
        loud = await first_loud(engine, {"near", "far"}, stepped)
        assert loud["far"] - loud["near"] == pytest.approx(0.050, abs=0.03)
        assert engine.sinks()["far"].delay_ms == 50


def write_float_wav(path: Path, samples: np.ndarray) -> None:
    """A 32-bit float WAV (format 3), which may hold NaN and infinities."""
    data = samples.astype("<f4").tobytes()
    channels = samples.shape[1]
    fmt = (b"fmt " + (16).to_bytes(4, "little") + (3).to_bytes(2, "little")
           + channels.to_bytes(2, "little") + RATE.to_bytes(4, "little")
           + (RATE * 4 * channels).to_bytes(4, "little") + (4 * channels).to_bytes(2, "little")
           + (32).to_bytes(2, "little"))
    body = b"WAVE" + fmt + b"data" + len(data).to_bytes(4, "little") + data
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)


@pytest.mark.trio
async def test_nan_in_a_float_file_is_silence_and_never_sticks_in_a_variant(engine, tmp_path):
    samples = tone(1000.0, 0.5, dbfs=-12.0)
    samples[1000:1100] = np.nan      # a broken stretch, once every loop
    samples[2000, 0] = np.inf
    write_float_wav(tmp_path / "broken.wav", samples)
    await engine.add_source("broken", SourceSpec(kind="file", path=str(tmp_path / "broken.wav")))
    await engine.add_sink("main", SinkSpec(kind="opus"))
    await engine.add_route("r", RouteSpec("broken", "main"))
    await engine.add_variant("main~clear", "main", Variant(clear=True))
    for sink in ("main", "main~clear"):
        peak, rms = await channel_levels(engine, sink, count=6)
        assert all(math.isfinite(x) for x in peak + rms), (sink, peak, rms)
        assert min(rms) > -30 and max(peak) <= 0.0   # the tone goes on around it


# ---- RTP forwards (a relay's ingest) -----------------------------------------------


def decode_opus(payloads: list[bytes]) -> np.ndarray:
    """Opus payloads decoded (PyAV's libopus) to float samples, left channel."""
    import av
    codec = av.CodecContext.create("libopus", "r")
    out = []
    for payload in payloads:
        for frame in codec.decode(av.Packet(payload)):
            samples = frame.to_ndarray()
            out.append(samples[0] if frame.format.is_planar else samples[0, ::2])
    return np.concatenate(out).astype(np.float64)


async def receive_rtp(sock, count: int, timeout: float = 5.0) -> list[bytes]:
    packets = []
    with trio.fail_after(timeout):
        while len(packets) < count:
            packets.append(await sock.recv(2048))
    return packets


@pytest.mark.trio
@pytest.mark.parametrize("srtp", [False, True], ids=["rtp", "srtp"])
async def test_a_forward_sends_the_sinks_opus_as_rtp(engine, srtp):
    import struct

    import pylibsrtp

    await tone_graph(engine, hz=440.0)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        key = os.urandom(30) if srtp else None
        forward = engine.start_forward("main", "127.0.0.1", port, payload_type=111,
                                       ssrc=0x1234ABCD, srtp_key=key)
        packets = await receive_rtp(sock, 100)
        if srtp:
            session = pylibsrtp.Session(pylibsrtp.Policy(
                key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
            packets = [session.unprotect(p) for p in packets]
        headers = [struct.unpack("!BBHII", p[:12]) for p in packets]
        assert all(h[0] == 0x80 and h[1] & 0x7F == 111 and h[4] == 0x1234ABCD for h in headers)
        seqs = [h[2] for h in headers]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        stamps = [h[3] for h in headers]
        assert all((b - a) & 0xFFFFFFFF == 480 for a, b in zip(stamps, stamps[1:], strict=False))  # 10 ms
        samples = decode_opus([p[12:] for p in packets[20:]])
        assert abs(dominant_frequency(samples) - 440.0) < 2.0
        stats = forward.stats()
        assert stats.transport == "forward" and stats.packets_sent >= 100
        assert engine.stats().listeners == 0     # not a listener
        await engine.remove_route("tone-main")
        with pytest.raises(EngineError) as busy:
            await engine.remove_sink("main")     # the forward hangs off it
        assert busy.value.code == ErrorCode.BUSY
        await forward.aclose()
    await engine.remove_sink("main")             # free once the forward is gone


@pytest.mark.trio
@pytest.mark.parametrize("host, port, pt, key, reason", [
    ("relay.example", 5000, 111, None, "numeric address"),
    ("127.0.0.1", 0, 111, None, "port"),
    ("127.0.0.1", 5000, 8, None, "payload type"),
    ("127.0.0.1", 5000, 111, b"short", "SRTP key"),
])
async def test_a_forward_is_refused_with_a_reason(engine, host, port, pt, key, reason):
    await tone_graph(engine)
    with pytest.raises(EngineError) as refused:
        engine.start_forward("main", host, port, payload_type=pt, srtp_key=key)
    assert refused.value.code == ErrorCode.INVALID and reason in refused.value.message
    await engine.remove_route("tone-main")
    await engine.remove_sink("main")             # nothing was left on it
