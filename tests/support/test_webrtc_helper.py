"""The test peer itself, checked against an aiortc sender (no engine needed),
so a failing service test is not the helper's fault."""
from __future__ import annotations

import asyncio
import fractions
import threading

import numpy as np
import pytest
import trio

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from av import AudioFrame

from tests.support.webrtc import (
    dominant_frequency, open_aiortc_listener, rms_dbfs, split_candidates, synthetic_offer,
)


class _Sine(AudioStreamTrack):
    def __init__(self, hz: float, amplitude: float):
        super().__init__()
        self.hz, self.amplitude, self.n = hz, amplitude, 0

    async def recv(self) -> AudioFrame:
        # paced by AudioStreamTrack's clock (20 ms frames)
        silence = await super().recv()
        samples = silence.samples
        t = (np.arange(samples) + self.n) / 48000
        self.n += samples
        mono = (self.amplitude * 32767 * np.sin(2 * np.pi * self.hz * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16",
                                        layout="stereo")
        frame.sample_rate, frame.pts = 48000, silence.pts
        frame.time_base = fractions.Fraction(1, 48000)
        return frame


class _AiortcSender:
    """An aiortc answerer sending a sine, on its own asyncio thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pc: RTCPeerConnection | None = None

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    async def _answer(self, offer: str) -> str:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        for transceiver in self.pc.getTransceivers():
            transceiver.direction = "sendonly"
            self.pc.addTrack(_Sine(1000.0, 0.25))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def _close(self) -> None:
        if self.pc is not None:
            await self.pc.close()

    def close(self) -> None:
        self.call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.mark.trio
async def test_peer_receives_and_decodes_audio_from_an_aiortc_sender():
    sender = _AiortcSender()
    try:
        async with open_aiortc_listener() as peer:
            offer = await peer.create_offer()
            hosts = [c.split()[4] for _, c in peer.candidates]
            assert hosts and set(hosts) == {"127.0.0.1"}, hosts
            assert "recvonly" in offer
            answer = await trio.to_thread.run_sync(sender.call, sender._answer(offer))
            await peer.accept_answer(answer)
            await peer.wait_connected(timeout=10)
            samples = await peer.record(seconds=0.5)
            assert samples.dtype == np.float32 and len(samples) == 24000
            assert abs(dominant_frequency(samples) - 1000.0) < 2.0
            # 0.25 full-scale sine: -12 dBFS peak, -15 dBFS RMS (Opus is lossy)
            assert -17.0 < rms_dbfs(samples) < -13.0
            assert peer.packets_received > 0 and peer.first_packet_time is not None
    finally:
        await trio.to_thread.run_sync(sender.close)


def test_dominant_frequency_is_interpolated_between_bins():
    t = np.arange(4800) / 48000
    for hz in (440.0, 997.3, 1234.5):
        assert abs(dominant_frequency(np.sin(2 * np.pi * hz * t)) - hz) < 0.5
    assert rms_dbfs(np.zeros(10)) == float("-inf")
    assert abs(rms_dbfs(np.sin(2 * np.pi * 440 * t)) + 3.01) < 0.05


def test_split_candidates_and_synthetic_offer():
    offer = synthetic_offer(candidate_port=9)
    rest, candidates = split_candidates(offer)
    assert candidates == [("0", "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host")]
    assert "a=candidate" not in rest and "a=end-of-candidates" not in rest
    assert synthetic_offer() != synthetic_offer()  # fresh credentials each time
