"""RTP for the network sources' tests: packets built by hand (to send them
out of order, twice, or not at all), and GStreamer's own AES67 sender."""
from __future__ import annotations

import math
import struct

import numpy as np


def packet(seq: int, timestamp: int, ssrc: int, pt: int, payload: bytes, *,
           marker: bool = False) -> bytes:
    """An RFC 3550 packet: version 2, no padding, extension or CSRCs."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xffff,
                       timestamp & 0xffffffff, ssrc) + payload


class Tone:
    """A tone as L16 or L24 payloads (network byte order), frames at a time."""

    def __init__(self, hz: float = 1000.0, rate: int = 48000, channels: int = 2,
                 bits: int = 24, dbfs: float = -12.0) -> None:
        self.hz, self.rate, self.channels, self.bits = hz, rate, channels, bits
        self.amplitude = 10 ** (dbfs / 20)
        self.phase = 0.0

    def payload(self, frames: int) -> bytes:
        step = 2 * math.pi * self.hz / self.rate
        mono = self.amplitude * np.sin(self.phase + step * np.arange(frames))
        self.phase = (self.phase + step * frames) % (2 * math.pi)
        samples = np.repeat(mono, self.channels)
        if self.bits == 16:
            return (samples * 32767).astype(">i2").tobytes()
        ints = (samples * 8388607).astype(">i4").view(np.uint8).reshape(-1, 4)
        return ints[:, 1:].tobytes()   # the low three bytes of each, big-endian


# GStreamer's encoder and payloader for each encoding (Debian's plugins)
PAYLOADERS = {"L24": ("S24BE", [], "rtpL24pay"), "L16": ("S16BE", [], "rtpL16pay"),
              "opus": ("S16LE", ["opusenc", "!"], "rtpopuspay"),
              "PCMU": ("S16LE", ["mulawenc", "!"], "rtppcmupay"),
              "PCMA": ("S16LE", ["alawenc", "!"], "rtppcmapay")}


def gstreamer_sender(host: str, port: int, *, encoding: str = "L24", rate: int = 48000,
                     channels: int = 2, pt: int = 96, ptime_ms: float = 1.0,
                     hz: float = 1000.0) -> list[str]:
    """gst-launch-1.0 sending a tone (-12 dBFS peak) as AES67 does (L24, 1 ms
    packets), or as L16, Opus or G.711."""
    fmt, encoder, payloader = PAYLOADERS[encoding]
    ptime = str(int(ptime_ms * 1_000_000))
    timing = [] if encoding == "opus" else [f"min-ptime={ptime}", f"max-ptime={ptime}"]
    return ["gst-launch-1.0", "-q", "audiotestsrc", f"freq={hz}", "volume=0.25", "is-live=true",
            "!", "audioconvert", "!", "audioresample", "!",
            f"audio/x-raw,format={fmt},rate={rate},channels={channels}", "!", *encoder,
            payloader, f"pt={pt}", *timing,
            "!", "udpsink", f"host={host}", f"port={port}", f"bind-address={host}"]
