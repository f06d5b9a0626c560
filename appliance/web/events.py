"""Live events as Server-Sent Events: ``GET /api/events``.

Event names: ``levels`` (peak/RMS per source and sink, coalesced, about 20 a
second), ``device`` (a source's or sink's device lost/restored), ``xrun``,
``listeners`` (counts whenever they change). The stream starts with the
current ``listeners``, ``device`` and ``levels`` state. See docs/API.md.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

import trio
from quart import Blueprint, Response, request

from .common import client_address, service

__all__ = ["blueprint", "format_event", "event_stream"]

blueprint = Blueprint("events", __name__, url_prefix="/api")

KEEPALIVE_S = 15.0
LEVELS_MIN_INTERVAL_S = 0.04


def format_event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@blueprint.route("/events", methods=["GET"])
async def events() -> Response:
    return event_stream()


def event_stream(select: Callable[[str, Any], Any] | None = None) -> Response:
    """The SSE response; ``select(name, data)`` may narrow each event's data
    (None drops the event): the listen page's feed uses it."""
    if request.method == "HEAD":
        # the headers a GET would get, without a stream that never ends
        head = Response("", status=200, content_type="text/event-stream")
        head.headers["Cache-Control"] = "no-cache"
        return head
    svc = service()
    client = client_address()
    svc.check_event_room(client)   # 429 or 503 before the stream starts

    async def stream() -> AsyncIterator[bytes]:
        async with svc.subscribe_events(client) as sub:
            yield b"retry: 2000\n\n"
            while not sub.closed:
                batch = await sub.next_batch(KEEPALIVE_S)
                if select is not None:
                    picked = ((name, select(name, data)) for name, data in batch)
                    batch = [(name, data) for name, data in picked if data is not None]
                if not batch:
                    yield b": keepalive\n\n"
                    continue
                chunk = b"".join(format_event(name, data) for name, data in batch)
                yield chunk
                if any(name == "levels" for name, _ in batch):
                    await trio.sleep(LEVELS_MIN_INTERVAL_S)  # let levels coalesce

    response = Response(stream(), status=200, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None  # a stream lives as long as the client wants
    return response
