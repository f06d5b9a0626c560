"""Talking to servers the box does not control (WHIP servers, Janus relays):
their certificates, trying again and again with a backoff, and bodies read
within a size and a time. Whatever they send, the box waits a bounded time
and keeps a bounded amount."""
from __future__ import annotations

import logging
import ssl
import time
from typing import Awaitable, Callable, NoReturn

import httpx
import trio

__all__ = ["AttemptFailed", "BACKOFF_S", "BodyTooLong", "STEADY_S", "backoff_s", "client",
           "keep_trying", "read_body", "tls_context"]

log = logging.getLogger(__name__)

BACKOFF_S = (1, 2, 4, 8, 16, 30)
STEADY_S = 30.0        # up this long: the next failure starts the backoff over
MAX_SHOWN = 300        # characters of a reason kept for the admin page


class AttemptFailed(Exception):
    """Why an attempt at a server ended, in plain text for the admin page."""


def backoff_s(failures: int) -> int:
    """The wait before the next attempt after ``failures`` in a row (0: none)."""
    return BACKOFF_S[min(failures, len(BACKOFF_S)) - 1] if failures > 0 else 0


async def keep_trying(attempt: Callable[[], Awaitable[None]], *, name: str, peer: str,
                      up_since: Callable[[], float | None],
                      failed: Callable[[str], None]) -> NoReturn:
    """``attempt`` again and again until cancelled. Each ending, whatever
    the server sent, is told to ``failed`` with its reason, then waited out
    with the backoff; an attempt that was up (``up_since``) for ``STEADY_S``
    starts the backoff over."""
    failures = 0
    while True:
        try:
            await attempt()
            why = "the connection ended"
        except AttemptFailed as error:
            why = str(error)
        except (httpx.HTTPError, OSError, ssl.SSLError) as error:
            why = f"cannot reach the {peer}: {error}"
        except Exception as error:   # whatever a server sends, never the box
            log.exception("%s: attempt failed", name)
            why = f"the attempt failed: {error!r}"
        since = up_since()
        steady = since is not None and time.monotonic() - since >= STEADY_S
        failures = 0 if steady else failures + 1
        failed(why[:MAX_SHOWN])
        wait = backoff_s(failures)
        log.warning("%s: %s; again in %d s", name, why[:MAX_SHOWN], wait)
        await trio.sleep(wait)


def client(tls_ca: str, timeout_s: float) -> httpx.AsyncClient:
    """An HTTP client for one server: its CA (or the system's), each request
    bounded, redirects never followed blindly (the caller counts them)."""
    return httpx.AsyncClient(verify=tls_context(tls_ca), timeout=timeout_s,
                             follow_redirects=False)


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
