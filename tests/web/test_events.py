"""The live event stream (SSE) from the real engine's events."""
from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest
import trio

from tests.support.webrtc import synthetic_offer
from tests.web.conftest import ADMIN, make_config, open_server

pytestmark = pytest.mark.trio


class EventStream:
    """A minimal SSE client on a raw trio socket (HTTP/1.1, chunked), so no
    half-consumed async generator is left to the garbage collector."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buffer = b""
        self.text = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        self.buffer += data

    async def _read_chunk(self) -> None:
        while b"\r\n" not in self.buffer:
            await self._fill()
        size_line, self.buffer = self.buffer.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        while len(self.buffer) < size + 2:
            await self._fill()
        if size == 0:
            self.ended = True
        self.text += self.buffer[:size]
        self.buffer = self.buffer[size + 2:]

    async def next(self) -> tuple[str, dict] | None:
        """The next event, or None when the stream ended."""
        while True:
            while b"\n\n" not in self.text:
                if self.ended:
                    return None
                try:
                    await self._read_chunk()
                except EOFError:
                    return None
            block, self.text = self.text.split(b"\n\n", 1)
            name, data = None, []
            for line in block.decode().splitlines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
            if name is not None:
                return name, json.loads("\n".join(data))


@asynccontextmanager
async def open_events(url: str, path: str = "/api/events",
                      headers: dict[str, str] = ADMIN) -> AsyncIterator[EventStream]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
                              "Accept: text/event-stream\r\n\r\n".encode())
        events = EventStream(stream)
        while b"\r\n\r\n" not in events.buffer:
            await events._fill()
        head, events.buffer = events.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        events.status = int(lines[0].split()[1])
        events.headers = {k.strip().lower(): v.strip()
                          for k, v in (line.split(":", 1) for line in lines[1:])}
        yield events


async def next_event(events: EventStream, wanted: str, timeout: float = 5) -> dict:
    with trio.fail_after(timeout):
        while (event := await events.next()) is not None:
            if event[0] == wanted:
                return event[1]
    raise AssertionError("the stream ended")


async def test_levels_listeners_and_mute_arrive_on_the_stream(server):
    client = server.client
    async with open_events(server.url) as events:
        assert events.status == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        assert events.headers["transfer-encoding"] == "chunked"
        first = await next_event(events, "listeners")
        assert first == {"total": 0, "sinks": {"main": 0}, "sources": {}, "routes": {}}
        levels = await next_event(events, "levels")
        tone = levels["sources"].get("tone") or (await next_event(events, "levels"))["sources"]["tone"]
        assert len(tone["peak_dbfs"]) == 2 and abs(tone["peak_dbfs"][0] + 12.0) < 0.5
        assert abs(tone["rms_dbfs"][0] + 15.0) < 0.5
        # at least 10 level updates a second
        start, count = trio.current_time(), 0
        while trio.current_time() - start < 1.0:
            await next_event(events, "levels")
            count += 1
        assert count >= 10, count

        r = await server.post_offer(synthetic_offer())
        assert r.status_code == 201
        assert (await next_event(events, "listeners"))["sinks"] == {"main": 1}
        assert (await client.delete(r.headers["Location"])).status_code == 200
        assert (await next_event(events, "listeners"))["total"] == 0

        assert (await client.patch("/api/routes/tone-main", json={"muted": True})).status_code == 200
        with trio.fail_after(5):
            while True:
                sink = (await next_event(events, "levels"))["sinks"].get("main")
                if sink and sink["peak_dbfs"][0] <= -100:
                    break
        assert sink["rms_dbfs"] == [-120.0, -120.0] or max(sink["rms_dbfs"]) <= -100


async def test_the_stream_needs_the_admin_token_and_ends_at_shutdown(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        async with open_events(server.url, headers={}) as events:
            assert events.status == 401
        async with open_events(server.url) as events:
            assert events.status == 200
            await next_event(events, "levels")
            server.stop.set()
            with trio.fail_after(10):
                while await events.next() is not None:  # ends when the server stops
                    pass
            with trio.fail_after(15):
                await server.done.wait()
