"""Simulated sound hardware for tests: ALSA plugin PCMs configured through an
asoundrc, and a private PulseAudio daemon (a clocked "device" that can be
pulled away and brought back). No sound card or kernel module is needed."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import wave
from pathlib import Path

import numpy as np

RATE = 48000


def use_asoundrc(monkeypatch, path: Path, text: str) -> None:
    """Point alsa-lib at the system config plus `text`. alsa-lib re-reads
    ALSA_CONFIG_PATH when it next opens a PCM, so this works mid-process."""
    path.write_text(text)
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"/usr/share/alsa/alsa.conf:{path}")


def tone(hz: float, seconds: float, dbfs: float = -6.0, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    mono = (10 ** (dbfs / 20)) * np.sin(2 * np.pi * hz * t)
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


def write_raw_s32(path: Path, samples: np.ndarray) -> None:
    """Raw S32_LE: the format the engine asks a device for first. (alsa-lib's
    file plugin reads its infile wrongly behind a format-converting plug, so
    the file must already be in the format the engine picks.)"""
    path.write_bytes((np.clip(samples, -1, 1) * 2147483392).astype("<i4").tobytes())


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float samples of a 16-bit WAV, tolerating a header that was never
    finalised (alsa-lib's file plugin rewrites the sizes only on close)."""
    data = path.read_bytes()
    channels = int.from_bytes(data[22:24], "little")
    rate = int.from_bytes(data[24:28], "little")
    pos = data.find(b"data")
    pcm = np.frombuffer(data[pos + 8:len(data) - (len(data) - pos - 8) % (2 * channels)],
                        dtype="<i2")
    return pcm.reshape(-1, channels).mean(axis=1) / 32768.0, rate


class PulseDaemon:
    """A PulseAudio daemon of our own, with a sine-wave "microphone" and a
    null "speaker". `stop()` makes every PCM on it fail, like a HAT that was
    unplugged; `start()` brings it back."""

    def __init__(self, workdir: Path, sine_hz: int = 700):
        self.dir = workdir
        self.socket = workdir / "native"
        self.sine_hz = sine_hz
        self.proc: subprocess.Popen | None = None

    def asoundrc(self) -> str:
        server = f"unix:{self.socket}"
        return (f'pcm.hatin {{ type pulse device "sine" server "{server}" }}\n'
                f'pcm.hatout {{ type pulse device "hat" server "{server}" }}\n'
                f'ctl.hat {{ type pulse server "{server}" }}\n')

    def start(self, timeout: float = 10.0) -> None:
        if shutil.which("pulseaudio") is None:
            raise RuntimeError("pulseaudio is not installed (make test installs it)")
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        env = dict(os.environ, HOME=str(self.dir), XDG_RUNTIME_DIR=str(self.dir),
                   XDG_CONFIG_HOME=str(self.dir / "config"))
        env.pop("LD_PRELOAD", None)  # a sanitizer runtime is for our engine, not the daemon
        self.proc = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n",
             "--use-pid-file=no", "--system=no", "--log-target=stderr", "--log-level=0",
             f"--load=module-native-protocol-unix socket={self.socket} auth-anonymous=1",
             f"--load=module-sine-source source_name=sine frequency={self.sine_hz}",
             "--load=module-null-sink sink_name=hat"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # an external process: poll its socket
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {self.proc.returncode}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("pulseaudio did not come up")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None
