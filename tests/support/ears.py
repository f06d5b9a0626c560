"""What each ear hears: a stereo channel with LEFT_HZ on the left and
RIGHT_HZ on the right (a looped file source), a browser playing it into a
PulseAudio null sink ("hat", tests/support/audio_sim.PulseDaemon) whose
monitor is recorded with left and right apart, and each side's level of
each tone. Used by tests/e2e/test_stereo.py (the box's own WHEP) and
tests/support/janus_page_check.py (a Janus relay)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from tests.support.audio_sim import RATE, write_wav

LEFT_HZ, RIGHT_HZ = 440.0, 660.0
# the box's config data (tests/web/conftest.make_config): the file source
# stereo_file writes, on a stereo Opus channel "main"
STEREO_CHANNEL = {
    "sources": [{"id": "lr", "kind": "file", "path": "lr.wav"}],
    "sinks": [{"id": "main", "name": "Stage", "kind": "opus", "channels": 2}],
    "routes": [{"id": "lr-main", "source_id": "lr", "sink_id": "main"}],
}
# a side's own tone is this far above the other's (dB) in its ear
SEPARATION_DB = 25
# the speaker carries sound once a peak in a chunk is above -40 dBFS
SOUND, SOUND_CHUNK_S = 10 ** (-40 / 20), 0.05


def stereo_file(media: Path) -> None:
    """One second, looped by the file source: both tones whole cycles."""
    media.mkdir(parents=True, exist_ok=True)
    t = np.arange(RATE) / RATE
    amp = 10 ** (-12 / 20)
    write_wav(media / "lr.wav", np.stack([amp * np.sin(2 * np.pi * LEFT_HZ * t),
                                          amp * np.sin(2 * np.pi * RIGHT_HZ * t)], axis=1))


class _Monitor:
    """The null sink's monitor as one running parec (it records until the
    ``with`` block ends): read it to a frame count, left and right apart."""

    def __init__(self, socket: Path) -> None:
        self.proc = subprocess.Popen(
            ["parec", f"--server=unix:{socket}", "--device=hat.monitor", "--raw",
             "--format=s16le", f"--rate={RATE}", "--channels=2", "--latency-msec=20"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def read(self, seconds: float) -> np.ndarray:
        """The next ``seconds`` of what the speaker got, (n, 2) float."""
        want = int(seconds * RATE) * 4
        data = b""
        assert self.proc.stdout is not None
        while len(data) < want:
            chunk = self.proc.stdout.read(min(65536, want - len(data)))
            if not chunk:
                break
            data += chunk
        assert len(data) == want, f"parec gave {len(data)} of {want} bytes"
        return np.frombuffer(data, dtype="<i2").reshape(-1, 2).astype(np.float64) / 32768.0

    def __enter__(self) -> _Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def tone_dbfs(samples: np.ndarray, hz: float) -> float:
    """The level of one frequency in one ear, in dBFS of a full-scale sine."""
    window = np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(samples * window)) / (window.sum() / 2)
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    band = (freqs > hz - 5) & (freqs < hz + 5)
    return float(20 * np.log10(spectrum[band].max() + 1e-12))


def ears(samples: np.ndarray) -> dict[str, dict[float, float]]:
    """{"left": {LEFT_HZ: dBFS, RIGHT_HZ: dBFS}, "right": {...}}."""
    return {side: {hz: round(tone_dbfs(samples[:, i], hz), 1) for hz in (LEFT_HZ, RIGHT_HZ)}
            for i, side in enumerate(("left", "right"))}


def ears_from_json(heard: dict[str, dict[str, float]]) -> dict[str, dict[float, float]]:
    """``ears`` back from JSON (which made its frequencies strings)."""
    return {side: {float(hz): db for hz, db in tones.items()} for side, tones in heard.items()}


def hear(socket: Path, settle_s: float = 0.5, seconds: float = 1.0, *,
         start_within_s: float = 10.0) -> dict[str, dict[float, float]]:
    """``ears`` of what plays, from when the speaker first carries sound
    (at most ``start_within_s`` on: a browser that says it plays may open
    its audio output later on a busy machine; measured once, Firefox's first
    stream was still silent 1.5 s on) and ``settle_s`` of it is let go by
    (the first packets after a (re)connect: the jitter buffer fills)."""
    with _Monitor(socket) as monitor:
        for _ in range(int(start_within_s / SOUND_CHUNK_S)):
            if np.abs(monitor.read(SOUND_CHUNK_S)).max() > SOUND:
                break
        monitor.read(settle_s)
        return ears(monitor.read(seconds))


def each_side_in_its_own_ear(heard: dict[str, dict[float, float]]) -> bool:
    """Each side's tone plainly in its own ear, the other side's far below it."""
    left, right = heard["left"], heard["right"]
    return (left[LEFT_HZ] > -25 and right[RIGHT_HZ] > -25
            and left[LEFT_HZ] - left[RIGHT_HZ] > SEPARATION_DB
            and right[RIGHT_HZ] - right[LEFT_HZ] > SEPARATION_DB)
