"""Request bodies that a route reads as a stream and bounds itself (an
update bundle of hundreds of MB), instead of Quart's ``MAX_CONTENT_LENGTH``
for the whole app ([server] max_body_bytes).

Quart appends every chunk the server hands it to the request's body as it
arrives, however slowly the route reads it: a body read slower than the
network sends it (an SD card) would pile up in memory. For these routes the
body holds at most ``HIGH_WATER`` bytes not yet read; past that the
connection stops receiving until the route reads on, and the server's own
bounded queue and TCP push back on the client.

This reaches into Quart's body (``_data``, ``append``) as Quart 0.22 and
quart-trio 0.12 have it; 0.23/0.13 made the body a queue, and every request
then failed here. packages/python.txt holds the versions the suite runs.
"""
from __future__ import annotations

from typing import Any

import trio
from quart.wrappers.request import Request
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest

__all__ = ["STREAMED", "StreamingRequest", "StreamingConnection"]

# (method, path) of the routes that read their body as a stream and bound it
# themselves; every other route keeps MAX_CONTENT_LENGTH
STREAMED = {("POST", "/api/update")}
HIGH_WATER = 1 << 20


class StreamedBody(TrioBody):
    """A body without a total limit whose unread part stays small."""

    def __init__(self, expected_content_length: int | None, _max: int | None) -> None:
        super().__init__(expected_content_length, None)
        self._read = trio.Event()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._read.set()
        return data

    async def room(self) -> None:
        """Until the route has read enough of what came in."""
        while len(self._data) > HIGH_WATER and not self._complete.is_set():
            self._read = trio.Event()
            await self._read.wait()


class StreamingRequest(TrioRequest):
    def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
        if (method, path) in STREAMED:
            self.body_class = StreamedBody
        super().__init__(method, scheme, path, *args, **kwargs)


class StreamingConnection(TrioASGIHTTPConnection):
    async def handle_messages(  # type: ignore[override]
            self, nursery: trio.Nursery, request: Request, receive: Any) -> None:
        # Quart's loop (quart.asgi.ASGIHTTPConnection.handle_messages), waiting
        # for room in a streamed body before receiving more
        while True:
            message = await receive()
            if message["type"] == "http.request":
                request.body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    request.body.set_complete()
                elif isinstance(request.body, StreamedBody):
                    await request.body.room()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()
