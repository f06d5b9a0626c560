"""The streams announced on the LAN: SAP (RFC 2974), where Dante (in AES67
mode) and AES67 devices announce what they send, on 239.255.255.255 and
224.2.127.254, port 9875. The admin page lists them and adds one as an RTP
source with a click (``POST /api/sources`` with its SDP); an announcement
never makes a source by itself: anyone on the network may announce.

Every announcement's SDP goes through the project's checked parser
(``sdp.describe_stream``) and nothing else. What is kept is bounded: at most
``MAX_STREAMS`` streams (the one heard from longest ago goes first), each
for ten times its announcement interval (60 s to an hour, as RFC 2974 says);
at most ``RATE_PER_S`` datagrams a second are read, the rest are counted and
dropped, so a flood costs the event loop a bounded share. Encrypted and
compressed announcements are refused (a compressed one could be a
decompression bomb).
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio

from .errors import InvalidError
from .sdp import StreamDescription, describe_stream

__all__ = ["SAP_GROUPS", "SapListener", "parse_announcement"]

log = logging.getLogger(__name__)

SAP_GROUPS = ("239.255.255.255", "224.2.127.254")
MAX_DATAGRAM = 4096
MAX_STREAMS = 256
RATE_PER_S = 200.0
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 60.0, 3600.0
SDP_TYPE = b"application/sdp"


@dataclass(frozen=True)
class Announcement:
    deletion: bool
    origin: str                 # the announcer's address, as the SAP header says
    msg_hash: int
    sdp: str


def parse_announcement(datagram: bytes) -> Announcement:
    """One SAP datagram (RFC 2974 section 3), or ``InvalidError``."""
    if len(datagram) < 8 or len(datagram) > MAX_DATAGRAM:
        raise InvalidError("not a SAP datagram (its size)")
    flags, auth_words, msg_hash = datagram[0], datagram[1], struct.unpack("!H", datagram[2:4])[0]
    if flags >> 5 != 1:
        raise InvalidError("not SAP version 1")
    if flags & 0x02:
        raise InvalidError("encrypted")
    if flags & 0x01:
        raise InvalidError("compressed")
    ipv6 = bool(flags & 0x10)
    end = 4 + (16 if ipv6 else 4)
    if len(datagram) < end:
        raise InvalidError("shorter than its header")
    origin = str(ipaddress.ip_address(datagram[4:end]))
    body = datagram[end + 4 * auth_words:]
    if not body.startswith(b"v=0"):   # else a payload type comes first
        mime, nul, rest = body.partition(b"\0")
        if not nul or mime != SDP_TYPE:
            raise InvalidError("not application/sdp")
        body = rest
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidError("the SDP is not UTF-8") from None
    return Announcement(bool(flags & 0x04), origin, msg_hash, text)


@dataclass
class _Stream:
    description: StreamDescription
    sdp: str
    origin: str
    first_seen: float
    last_seen: float
    interval: float | None = None

    def timeout(self) -> float:
        if self.interval is None:
            return MAX_TIMEOUT_S
        return min(MAX_TIMEOUT_S, max(MIN_TIMEOUT_S, 10 * self.interval))


class SapListener:
    """Listens on ``port`` (9875; 0: not at all) for the SAP groups joined
    on ``interface`` ("" = as routing says), and keeps what was announced."""

    def __init__(self, port: int, *, interface: str = "",
                 groups: tuple[str, ...] = SAP_GROUPS) -> None:
        self.port, self.interface, self.groups = port, interface, groups
        self._streams: OrderedDict[tuple[str, int], _Stream] = OrderedDict()
        self.counts = {"received": 0, "announced": 0, "deleted": 0, "refused": 0, "dropped": 0}
        self.joined: list[str] = []
        self._tokens, self._refilled = RATE_PER_S, 0.0

    # ---- what the admin page reads -------------------------------------------------

    def streams(self) -> list[dict[str, Any]]:
        self._expire(trio.current_time())
        out = []
        for (origin, msg_hash), stream in self._streams.items():
            d = stream.description
            out.append({
                # names the announcement (its origin and hash), not its contents
                "id": hashlib.sha256(f"{origin}/{msg_hash}".encode()).hexdigest()[:12],
                "name": d.name, "origin": origin, "address": d.address, "port": d.port,
                "format": f"{d.encoding}/{d.clock_rate}/{d.channels}", "channels": d.channels,
                "ptime_ms": d.ptime_ms, "refclk": d.refclk, "sdp": stream.sdp,
                "age_s": round(trio.current_time() - stream.last_seen, 1)})
        return out

    # ---- taking datagrams ----------------------------------------------------------

    def take(self, datagram: bytes, now: float) -> None:
        """One datagram: counted, and kept, replaced or forgotten."""
        self.counts["received"] += 1
        self._tokens = min(RATE_PER_S, self._tokens + (now - self._refilled) * RATE_PER_S)
        self._refilled = now
        if self._tokens < 1:
            self.counts["dropped"] += 1
            return
        self._tokens -= 1
        try:
            announcement = parse_announcement(datagram)
            key = (announcement.origin, announcement.msg_hash)
            if announcement.deletion:
                if self._streams.pop(key, None) is not None:
                    self.counts["deleted"] += 1
                return
            known = self._streams.get(key)
            if known is not None and known.sdp == announcement.sdp:
                known.interval = now - known.last_seen
                known.last_seen = now
                self._streams.move_to_end(key)
                return
            description = describe_stream(announcement.sdp)
        except (InvalidError, ValueError):
            self.counts["refused"] += 1
            return
        self.counts["announced"] += 1
        self._streams[key] = _Stream(description, announcement.sdp, announcement.origin, now, now)
        self._streams.move_to_end(key)
        while len(self._streams) > MAX_STREAMS:
            self._streams.popitem(last=False)

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._streams.items() if now - s.last_seen > s.timeout()]:
            del self._streams[key]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.port:
            task_status.started()
            return
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            # other SAP listeners on this machine take the same port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                await sock.bind(("0.0.0.0", self.port))
                index = socket.if_nametoindex(self.interface) if self.interface else 0
            except OSError as error:
                log.warning("SAP: not listening on port %d: %s", self.port, error)
                task_status.started()
                return
            for group in self.groups:
                request = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") \
                    + struct.pack("@i", index)   # struct ip_mreqn
                try:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, request)
                    self.joined.append(group)
                except OSError as error:   # no multicast route (a laptop offline): unicast only
                    log.warning("SAP: cannot join %s: %s", group, error)
            task_status.started()
            while True:
                datagram, _ = await sock.recvfrom(MAX_DATAGRAM + 1)
                self.take(datagram, trio.current_time())
