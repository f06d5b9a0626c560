"""A Scream sender for tests: what the Scream driver on a Windows PC (or
ScreamRouter) sends. Each datagram is a 5-byte header (rate: bit 7 picks
44.1 kHz over 48 kHz, the rest multiplies it; bits per sample; channels; a
2-byte channel mask) and 1152 bytes of little-endian interleaved PCM, a byte
stream cut every 1152 bytes (a frame may straddle two datagrams).
ScreamRouter's per-process variant puts a 30-byte program tag first."""
from __future__ import annotations

import math
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import trio

from .realtime import REPO, become_realtime

PAYLOAD = 1152
# A send this late may empty a 20 ms jitter buffer (a datagram is 6 ms): the
# sender's stall, not the network's, when a busy machine held this Python
# process up (measured beside a QEMU boot: p99 9 ms, max 41 ms).
STALL_S = 0.014
PROGRAM_TAG = 30


def header(rate: int, bits: int, channels: int, mask: int = 0x3) -> bytes:
    base, flag = (44100, 0x80) if rate % 44100 == 0 else (48000, 0)
    return bytes([flag | rate // base, bits, channels]) + struct.pack("<H", mask)


def pcm(samples: np.ndarray, bits: int) -> bytes:
    """Interleaved float samples (-1..1) as little-endian PCM."""
    if bits == 16:
        return (np.clip(samples, -1, 1 - 2**-15) * 32768).astype("<i2").tobytes()
    ints = (np.clip(samples, -1, 1 - 2**-31) * 2**31).astype("<i4")
    if bits == 32:
        return ints.tobytes()
    raw = ints.view(np.uint8).reshape(-1, 4)
    return raw[:, 1:].tobytes()   # the top three bytes of each, little-endian


class ScreamSender:
    """A tone as a Scream stream to ``(host, port)`` from ``source``, paced
    in real time on this machine's clock, ``speed`` times the nominal rate
    (1.001: a sender whose clock runs 1000 ppm fast)."""

    def __init__(self, host: str, port: int, *, source: str = "127.0.0.1", hz: float = 1000.0,
                 rate: int = 48000, bits: int = 16, channels: int = 2, dbfs: float = -12.0,
                 speed: float = 1.0, program: bytes | None = None,
                 interface: str | None = None, say_stalls: bool = False) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        if interface is not None and family == socket.AF_INET6:   # a group's way out
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF,
                                 socket.if_nametoindex(interface))
        self.source, self.target = source, (host, port)
        self.hz, self.rate, self.bits, self.channels = hz, rate, bits, channels
        self.amplitude = 10 ** (dbfs / 20)
        self.speed, self.program = speed, program
        self.phase = 0.0
        self.sent = 0           # datagrams
        self.stream = b""       # PCM not sent yet
        self.stalled_at = -1e9  # time.monotonic() of its last send STALL_S or more late
        self.say_stalls = say_stalls   # and each printed (SenderProcess reads them)

    def set_format(self, rate: int, bits: int, channels: int) -> None:
        self.rate, self.bits, self.channels = rate, bits, channels
        self.stream = b""

    def _frames(self, n: int) -> bytes:
        step = 2 * math.pi * self.hz / self.rate
        t = self.phase + step * np.arange(n)
        self.phase = float((self.phase + step * n) % (2 * math.pi))
        mono = self.amplitude * np.sin(t)
        return pcm(np.repeat(mono, self.channels), self.bits)

    def datagram(self) -> bytes:
        """The next datagram of the stream."""
        stride = self.bits // 8 * self.channels
        while len(self.stream) < PAYLOAD:
            self.stream += self._frames(PAYLOAD // stride + 1)
        payload, self.stream = self.stream[:PAYLOAD], self.stream[PAYLOAD:]
        packet = header(self.rate, self.bits, self.channels) + payload
        if self.program is not None:
            packet = self.program.ljust(PROGRAM_TAG, b"\0") + packet
        return packet

    async def bind(self) -> None:
        """Send from ``source``."""
        await self.sock.bind((self.source, 0))

    async def run(self, *, packets: int | None = None) -> None:
        """From ``source``: send in real time until cancelled (or ``packets``
        were sent)."""
        await self.bind()
        await self.send(packets)

    async def send(self, packets: int | None = None, *, paced: bool = True) -> None:
        """Send ``packets`` more (None: until cancelled), in real time, or
        all at once when not ``paced`` (a burst)."""
        stop = None if packets is None else self.sent + packets
        due = trio.current_time()
        while stop is None or self.sent < stop:
            if paced and trio.current_time() - due >= STALL_S:   # this process was held up
                self.stalled_at = time.monotonic()
                if self.say_stalls:
                    print(self.stalled_at, flush=True)
            await self.sock.sendto(self.datagram(), self.target)
            self.sent += 1
            if paced:
                frames = PAYLOAD / (self.bits // 8 * self.channels)   # the format may change
                due += frames / (self.rate * self.speed)
                await trio.sleep_until(due)

    def close(self) -> None:
        self.sock.close()


class SenderProcess:
    """A ScreamSender in a real-time process of its own (support/realtime.py):
    in a test's own event loop a busy machine held the sender up (a late send
    starves the receiver, a burst floods it).
    ``stalled_at`` is its last late send, as ScreamSender's (time.monotonic
    is the same clock in every process)."""

    def __init__(self, host: str, port: int, *, speed: float = 1.0, hz: float = 1000.0,
                 program: bytes | None = None) -> None:
        self.args = [host, str(port), repr(speed), repr(hz)]
        if program is not None:
            self.args.append(program.decode())
        self.stalled_at = -1e9

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled (the process is killed then)."""
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests.support.scream", *self.args], cwd=REPO,
            stdout=subprocess.PIPE, preexec_fn=become_realtime)
        try:
            task_status.started()
            async for line in _lines(process.stdout):
                self.stalled_at = float(line)
        finally:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
                await process.stdout.aclose()


async def _lines(stream: trio.abc.ReceiveStream):
    pending = b""
    while data := await stream.receive_some():
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


if __name__ == "__main__":   # SenderProcess's: HOST PORT SPEED HZ [PROGRAM]
    host, port, speed, hz = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    program = sys.argv[5].encode() if len(sys.argv) > 5 else None

    async def main() -> None:
        await ScreamSender(host, port, speed=speed, hz=hz, program=program, say_stalls=True).run()
    trio.run(main)
