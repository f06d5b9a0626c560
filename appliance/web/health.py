"""``GET /healthz`` answers ``ok``, to anyone, touching nothing private; and
``answers(url)``, the probe that asks it through a real connection. The
systemd watchdog is fed only while that probe succeeds, so a server that
still runs but no longer accepts or answers (no fds left, a wedged
connection layer) is restarted."""
from __future__ import annotations

from urllib.parse import urlsplit

import trio
from quart import Blueprint, Response

__all__ = ["blueprint", "answers"]

blueprint = Blueprint("health", __name__)

_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
_MAX_ANSWER = 4096
# a server bound to every address is asked on loopback
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@blueprint.route("/healthz", methods=["GET"])
async def healthz() -> Response:
    return Response("ok", content_type="text/plain; charset=utf-8",
                    headers={"Cache-Control": "no-store"})


async def answers(url: str) -> bool:
    """Whether the server at ``url`` ("http://0.0.0.0:80") answers
    ``GET /healthz`` with 200 and ``ok``. The caller bounds the time."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        stream = await trio.open_tcp_stream(_LOOPBACK.get(host, host), parts.port or 80)
    except OSError:  # no fd left, nothing listening
        return False
    answer = b""
    try:
        async with stream:
            await stream.send_all(_REQUEST)
            while len(answer) < _MAX_ANSWER:
                chunk = await stream.receive_some(_MAX_ANSWER)
                if not chunk:
                    break
                answer += chunk
    except (trio.BrokenResourceError, OSError):
        return False
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200 ") and body == b"ok"
