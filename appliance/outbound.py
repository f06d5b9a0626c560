"""Talking to servers the box does not control (WHIP servers, Janus relays):
their certificates, how long to wait before trying again, and bodies read
within a size and a time. Whatever they send, the box waits a bounded time
and keeps a bounded amount."""
from __future__ import annotations

import ssl

import httpx
import trio

__all__ = ["BACKOFF_S", "BodyTooLong", "backoff_s", "read_body", "tls_context"]

BACKOFF_S = (1, 2, 4, 8, 16, 30)


def backoff_s(failures: int) -> int:
    """The wait before the next attempt after ``failures`` in a row (0: none)."""
    return BACKOFF_S[min(failures, len(BACKOFF_S)) - 1] if failures > 0 else 0


def tls_context(ca: str = "") -> ssl.SSLContext:
    """The system's CAs, or the one certificate (or CA) the admin gave."""
    context = ssl.create_default_context()
    if ca:
        context = ssl.create_default_context(cadata=ca)
        # another appliance's own certificate names its addresses, not
        # necessarily the one the admin typed: the certificate itself is the trust
        context.check_hostname = False
    return context


class BodyTooLong(Exception):
    """A body over the limit, or one that never ends."""


async def read_body(response: httpx.Response, limit: int, timeout_s: float) -> bytes:
    """A streamed response's body, at most ``limit`` bytes within
    ``timeout_s``; refused unread when it announces more."""
    announced = response.headers.get("Content-Length", "0")
    if not announced.isdigit() or int(announced) > limit:
        raise BodyTooLong
    body = b""
    # a body without a length is read whole, within the deadline, and kept
    # only up to the limit
    with trio.move_on_after(timeout_s) as reading:
        async for chunk in response.aiter_bytes():
            if len(body) <= limit:
                body += chunk
    if reading.cancelled_caught or len(body) > limit:
        raise BodyTooLong
    return body
