"""SAP announcements (RFC 2974) for tests, as AES67 devices send them."""
from __future__ import annotations

import socket
import struct


def sdp(name: str = "Desk ch 1-2", group: str = "239.69.1.10", port: int = 5004) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns={name}\r\nc=IN IP4 {group}/32\r\n"
            f"t=0 0\r\nm=audio {port} RTP/AVP 97\r\na=rtpmap:97 L24/48000/2\r\na=ptime:1\r\n"
            "a=ts-refclk:ptp=IEEE1588-2008:00-1D-C1-FF-FE-0E-10-4C:0\r\n")


def announcement(text: str, *, msg_hash: int = 7, origin: str = "192.168.1.10",
                 delete: bool = False, flags: int = 0, auth: bytes = b"",
                 payload_type: bool = True) -> bytes:
    ipv6 = ":" in origin
    first = 0x20 | (0x10 if ipv6 else 0) | (0x04 if delete else 0) | flags
    header = struct.pack("!BBH", first, len(auth) // 4, msg_hash)
    header += socket.inet_pton(socket.AF_INET6 if ipv6 else socket.AF_INET, origin) + auth
    return header + (b"application/sdp\0" if payload_type else b"") + text.encode()
