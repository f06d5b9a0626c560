"""A real WebRTC listener (aiortc) usable from trio tests, plus audio checks.

aiortc runs on asyncio, so every peer gets its own asyncio event loop on its
own thread; the trio side talks to it through ``trio.to_thread`` and
``asyncio.run_coroutine_threadsafe``. ICE host candidates are limited to
127.0.0.1 (aioice's address discovery is patched on import) and no STUN
server is used, so a test never sends a packet off this machine.

    async with open_aiortc_listener() as peer:
        offer = await peer.create_offer()
        await peer.accept_answer(answer)
        await peer.wait_connected(timeout=10)
        samples = await peer.record(seconds=1.0)
        assert abs(dominant_frequency(samples) - 440) < 2
"""
from __future__ import annotations

import asyncio
import fractions
import functools
import os
import secrets
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import numpy as np
import trio

import aioice
import aioice.ice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

__all__ = ["open_aiortc_listener", "AiortcListener", "open_aiortc_publisher", "PeerError",
           "dominant_frequency",
           "rms_dbfs", "synthetic_offer", "split_candidates"]

RATE = 48000
T = TypeVar("T")


def _loopback_only(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


# Tests must never gather (or send from) any address but loopback.
aioice.ice.get_host_addresses = _loopback_only


class PeerError(Exception):
    """The aiortc peer failed (connection failed, closed, timed out)."""


class AiortcListener:
    """One receive-only aiortc peer. Create it with ``open_aiortc_listener``."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._pc: RTCPeerConnection | None = None
        self._connected: asyncio.Event | None = None
        self._failed: asyncio.Event | None = None
        self._consumer: asyncio.Task | None = None
        self._record_lock = threading.Lock()
        self._recorders: list[tuple[list[np.ndarray], int, asyncio.Future]] = []
        self.packets_received = 0
        self.first_packet_time: float | None = None
        self.frames_decoded = 0
        self.connection_state = "new"
        self.offer_sdp: str | None = None
        self.on_frame: Callable[[float, np.ndarray], None] | None = None

    # ---- bridge ----------------------------------------------------------

    async def _run(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run coroutine function ``fn`` on the peer's asyncio loop and wait
        for it from trio (cancellable: cancelling trio cancels the coroutine)."""
        future = asyncio.run_coroutine_threadsafe(fn(), self._loop)
        try:
            return await trio.to_thread.run_sync(
                functools.partial(future.result, timeout), abandon_on_cancel=True)
        except BaseException:
            future.cancel()
            raise

    # ---- set up (runs on the asyncio loop) -----------------------------------

    def _transceiver(self, pc: RTCPeerConnection) -> Any:
        return pc.addTransceiver("audio", direction="recvonly")

    async def _setup(self) -> None:
        self._connected = asyncio.Event()
        self._failed = asyncio.Event()
        # iceServers=[]: aiortc's default is a public STUN server.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pc = pc
        transceiver = self._transceiver(pc)
        receiver = transceiver.receiver
        original = receiver._handle_rtp_packet

        async def counting(packet: Any, arrival_time_ms: int) -> None:
            if self.first_packet_time is None:
                self.first_packet_time = time.monotonic()
            self.packets_received += 1
            await original(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = counting  # every RTP packet for this m-line

        @pc.on("connectionstatechange")
        def on_state() -> None:
            self.connection_state = pc.connectionState
            if pc.connectionState == "connected":
                self._connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self._failed.set()

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and self._consumer is None:
                self._consumer = asyncio.ensure_future(self._consume(track))

    async def _consume(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames_decoded += 1
            if self.on_frame is not None:   # a benchmark's: when each decoded frame came
                self.on_frame(time.monotonic(), _frame_to_channels(frame).mean(axis=1))
            with self._record_lock:
                if not self._recorders:
                    continue
            channels = _frame_to_channels(frame)
            with self._record_lock:
                done = []
                for entry in self._recorders:
                    chunks, wanted, future = entry
                    chunks.append(channels)
                    if sum(len(c) for c in chunks) >= wanted:
                        done.append(entry)
                for entry in done:
                    self._recorders.remove(entry)
                    chunks, wanted, future = entry
                    if not future.done():
                        future.set_result(np.concatenate(chunks)[:wanted])

    async def _close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
        if self._pc is not None:
            await self._pc.close()

    # ---- the trio-facing API -----------------------------------------------

    async def create_offer(self, *, trickle: bool = False, data_channel: bool = False) -> str:
        """Create the offer (recvonly Opus audio) with every ICE candidate in
        it. With ``trickle=True`` the candidate lines are left out (use
        ``candidates`` to send them separately, e.g. by PATCH); with
        ``data_channel=True`` a data channel m-line follows the audio."""
        async def offer() -> str:
            if data_channel:
                self._pc.createDataChannel("chat")
            await self._pc.setLocalDescription(await self._pc.createOffer())
            return self._pc.localDescription.sdp

        sdp = await self._run(offer, timeout=10)
        self.offer_sdp = sdp
        if trickle:
            sdp, _ = split_candidates(sdp)
        return sdp

    @property
    def candidates(self) -> list[tuple[str, str]]:
        """(mid, "candidate:...") pairs of the last offer."""
        if self.offer_sdp is None:
            return []
        return split_candidates(self.offer_sdp)[1]

    async def accept_answer(self, answer_sdp: str) -> None:
        self.answer_sdp = answer_sdp

        async def accept() -> None:
            await self._pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        await self._run(accept, timeout=10)

    async def answer_offer(self, offer_sdp: str) -> str:
        """Answer a server's offer (a Janus mountpoint's): the answer with
        every ICE candidate in it."""
        async def answer() -> str:
            await self._pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            await self._pc.setLocalDescription(await self._pc.createAnswer())
            return self._pc.localDescription.sdp
        return await self._run(answer, timeout=10)

    async def wait_connected(self, timeout: float = 10) -> None:
        """Wait until DTLS is up (connectionState "connected")."""
        async def wait() -> None:
            done, _ = await asyncio.wait(
                [asyncio.ensure_future(self._connected.wait()),
                 asyncio.ensure_future(self._failed.wait())],
                timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in _:
                task.cancel()
            if self._connected.is_set():
                return
            if self._failed.is_set():
                raise PeerError(f"connection {self._pc.connectionState}")
            raise PeerError(f"not connected after {timeout} s "
                            f"(state {self._pc.connectionState})")
        await self._run(wait)

    async def wait_first_packet(self, timeout: float = 10) -> float:
        """Wait for the first RTP packet; returns its arrival (time.monotonic)."""
        with trio.fail_after(timeout):
            while self.first_packet_time is None:
                await trio.sleep(0.005)  # polls a value another thread sets
        return self.first_packet_time

    async def record(self, seconds: float = 1.0, *, timeout: float | None = None) -> np.ndarray:
        """Decoded audio from now on: ``seconds`` of float32 mono at 48 kHz."""
        return (await self.record_channels(seconds, timeout=timeout)).mean(axis=1)

    async def record_stereo(self, seconds: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """What each ear heard from now on: ``seconds`` of left and right."""
        both = await self.record_channels(seconds)
        if both.shape[1] != 2:
            raise PeerError(f"the decoder gave {both.shape[1]} channel(s), not 2")
        return both[:, 0], both[:, 1]

    async def record_channels(self, seconds: float = 1.0, *,
                              timeout: float | None = None) -> np.ndarray:
        """Decoded audio from now on: ``seconds`` x channels, float32 at 48 kHz."""
        wanted = int(round(seconds * RATE))

        async def rec() -> np.ndarray:
            future = self._loop.create_future()
            with self._record_lock:
                self._recorders.append(([], wanted, future))
            try:
                return await asyncio.wait_for(future, timeout or seconds + 10)
            except asyncio.TimeoutError:
                raise PeerError(f"fewer than {seconds} s of audio arrived "
                                f"({self.packets_received} packets)") from None
            finally:
                with self._record_lock:
                    self._recorders[:] = [r for r in self._recorders if r[2] is not future]

        return await self._run(rec)

    async def stats(self) -> dict[str, Any]:
        """aiortc's getStats() report as a dict of plain dicts."""
        async def get() -> dict[str, Any]:
            report = await self._pc.getStats()
            return {k: dict(vars(v)) for k, v in report.items()}
        return await self._run(get, timeout=10)

    async def close(self) -> None:
        """Close the peer connection (what a tab that is closed does: no
        DELETE, the server notices by itself)."""
        await self._run(self._close, timeout=10)

    async def vanish(self) -> None:
        """Go silent without a goodbye (a phone that lost the network): the
        peer's ICE sockets close, so no consent check, RTCP or DTLS
        close_notify leaves it any more."""
        async def cut() -> None:
            for transceiver in self._pc.getTransceivers():
                connection = transceiver.receiver.transport.transport._connection
                for protocol in connection._protocols:
                    if protocol.transport is not None:
                        protocol.transport.close()
        await self._run(cut, timeout=10)

    async def rebind(self, host: str) -> tuple[str, int]:
        """Move to another local address, as a phone whose Wi-Fi went away
        does: a socket on ``host`` replaces the ICE socket, a check that
        nominates the new path leaves from it (Chromium puts USE-CANDIDATE
        on the checks of the connection it selects when the other side is
        ICE-lite), the old socket closes, and from then on consent checks,
        RTCP and media arrive on the new one. The DTLS association and its
        SRTP keys stay. Returns the new local address."""
        async def move() -> tuple[str, int]:
            ice = self._pc.getTransceivers()[0].receiver.transport.transport
            connection = ice._connection
            pair = connection._nominated[1]
            old = pair.protocol
            _, protocol = await self._loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), local_addr=(host, 0))
            port = protocol.transport.get_extra_info("sockname")[1]
            protocol.local_candidate = aioice.Candidate(
                foundation="moved", component=1, transport="udp",
                priority=old.local_candidate.priority, host=host, port=port, type="host")
            connection._protocols.append(protocol)
            pair.protocol = protocol      # before the old one closes: its loss is no pair's
            old.transport.close()
            request = connection.build_request(pair, nominate=True)
            await protocol.request(request, pair.remote_addr,
                                   integrity_key=connection.remote_password.encode())
            return host, port
        return await self._run(move, timeout=10)

    async def protect_rtcp(self, packet: bytes) -> bytes:
        """``packet`` (plain RTCP) protected with this peer's own SRTCP
        session: what its DTLS keys let it send, from wherever it is."""
        async def protect() -> bytes:
            return self._pc.getTransceivers()[0].receiver.transport._tx_srtp.protect_rtcp(packet)
        return await self._run(protect, timeout=10)


class SineTrack(AudioStreamTrack):
    """A stereo sine at ``hz`` (``right_hz`` on the right) in 20 ms frames at
    48 kHz, paced like a microphone."""

    FRAME = RATE // 50

    def __init__(self, hz: float, right_hz: float | None = None, dbfs: float = -12.0):
        super().__init__()
        self.hz, self.right_hz = hz, right_hz if right_hz is not None else hz
        self.amplitude = 32767 * 10 ** (dbfs / 20)
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> Any:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.sent / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        n = self.FRAME
        t = (np.arange(n) + self.sent) / RATE
        left = self.amplitude * np.sin(2 * np.pi * self.hz * t)
        right = self.amplitude * np.sin(2 * np.pi * self.right_hz * t)
        data = np.empty(2 * n, dtype=np.int16)
        data[0::2], data[1::2] = left, right
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.sent, fractions.Fraction(1, RATE)
        self.sent += n
        return frame


class AiortcPublisher(AiortcListener):
    """A send-only aiortc peer (a WHIP publisher) playing a ``SineTrack``,
    with a video track first when ``video`` (as OBS offers)."""

    track: SineTrack
    video = False

    def _transceiver(self, pc: RTCPeerConnection) -> Any:
        if self.video:
            pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        return pc.addTransceiver(self.track, direction="sendonly")


def _frame_to_channels(frame: Any) -> np.ndarray:
    """A decoded frame as samples x channels."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        data = data.reshape(channels, -1).T
    else:
        data = data.reshape(-1, channels)
    if frame.format.name.startswith("s16"):
        data = data / 32768.0
    elif frame.format.name.startswith("s32"):
        data = data / 2147483648.0
    return np.asarray(data, dtype=np.float32)


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


@asynccontextmanager
async def open_aiortc_publisher(hz: float, right_hz: float | None = None, *,
                                video: bool = False) -> AsyncIterator[AiortcPublisher]:
    """A send-only aiortc peer playing ``hz`` (``right_hz`` on the right)."""
    async with open_aiortc_listener(AiortcPublisher, SineTrack(hz, right_hz),
                                    video=video) as peer:
        yield peer


@asynccontextmanager
async def open_aiortc_listener(cls: type[AiortcListener] = AiortcListener,
                               track: Any = None, video: bool = False) -> AsyncIterator[Any]:
    """A receive-only aiortc peer on its own asyncio thread; closed (and its
    thread joined) when the block ends."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=_run_loop, args=(loop, ready),
                              name="aiortc-peer", daemon=True)
    thread.start()
    await trio.to_thread.run_sync(ready.wait)
    peer = cls(loop)
    if track is not None:
        peer.track, peer.video = track, video
    try:
        await peer._run(peer._setup, timeout=10)
        yield peer
    finally:
        with trio.CancelScope(shield=True):
            try:
                await peer._run(peer._close, timeout=10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                await trio.to_thread.run_sync(thread.join, 10)


# ---- offers without a peer ----------------------------------------------------

def synthetic_offer(*, candidate_port: int | None = None, payload_type: int = 111,
                    opus: bool = True) -> str:
    """A well-formed recvonly Opus offer with fresh ICE credentials and no peer
    behind it (it never connects). Cheap: for tests that need many sessions.
    ``candidate_port`` adds one host candidate on 127.0.0.1 at that port."""
    ufrag = secrets.token_hex(4)
    pwd = secrets.token_hex(12)
    fingerprint = ":".join(f"{b:02X}" for b in os.urandom(32))
    session = secrets.randbelow(2**62)
    codec = (f"a=rtpmap:{payload_type} opus/48000/2\r\n"
             f"a=fmtp:{payload_type} minptime=10;useinbandfec=1\r\n") if opus else \
            f"a=rtpmap:{payload_type} PCMU/8000\r\n"
    lines = (
        "v=0\r\n"
        f"o=- {session} 2 IN IP4 127.0.0.1\r\n"
        "s=-\r\n"
        "t=0 0\r\n"
        "a=group:BUNDLE 0\r\n"
        "a=msid-semantic: WMS\r\n"
        f"m=audio 9 UDP/TLS/RTP/SAVPF {payload_type}\r\n"
        "c=IN IP4 0.0.0.0\r\n"
        "a=rtcp:9 IN IP4 0.0.0.0\r\n"
        f"a=ice-ufrag:{ufrag}\r\n"
        f"a=ice-pwd:{pwd}\r\n"
        "a=ice-options:trickle\r\n"
        f"a=fingerprint:sha-256 {fingerprint}\r\n"
        "a=setup:actpass\r\n"
        "a=mid:0\r\n"
        "a=recvonly\r\n"
        "a=rtcp-mux\r\n"
        + codec
    )
    if candidate_port is not None:
        lines += (f"a=candidate:1 1 udp 2130706431 127.0.0.1 {candidate_port} typ host\r\n"
                  "a=end-of-candidates\r\n")
    return lines


def split_candidates(sdp: str) -> tuple[str, list[tuple[str, str]]]:
    """Remove the a=candidate / a=end-of-candidates lines from an SDP; returns
    the rest and the (mid, "candidate:...") pairs in order."""
    kept: list[str] = []
    found: list[tuple[int, str]] = []
    mids: dict[int, str] = {}
    section = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            section += 1
        elif line.startswith("a=mid:"):
            mids[section] = line[len("a=mid:"):].strip()
        if line.startswith("a=candidate:"):
            found.append((section, line[2:]))
        elif not line.startswith("a=end-of-candidates"):
            kept.append(line)
    return "\r\n".join(kept) + "\r\n", [(mids.get(i, str(i)), c) for i, c in found]


# ---- audio checks ---------------------------------------------------------------

def dominant_frequency(samples: np.ndarray, rate: int = RATE) -> float:
    """Frequency (Hz) of the strongest FFT peak, refined by parabolic
    interpolation of the log magnitude around it (Hann window)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    if len(x) < 16:
        raise ValueError("too few samples")
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if 0 < k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1:k + 2] + 1e-20)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom != 0 else 0.0
    else:
        offset = 0.0
    return (k + offset) * rate / len(x)


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale sine is -3.01 dBFS); -inf for silence."""
    x = np.asarray(samples, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")
