"""Live-event streams are bounded: anyone who may listen may open one, and
8,000 that never read kept the event loop so busy that /healthz took 17-35 s
(the watchdog's gap reached 121 s: systemd would have restarted the box). A
client address (IPv6: a /64) may hold a few, the server a bounded number,
and a stream whose client stopped reading leaves the fan-out within
seconds."""
from __future__ import annotations

import contextlib
from typing import AsyncIterator

import httpx
import pytest
import trio

from appliance import feed
from tests.web.conftest import make_config, open_server
from tests.support.trust import TRUST

pytestmark = pytest.mark.trio


@contextlib.asynccontextmanager
async def streams_from(server, address: str) -> AsyncIterator[list[int]]:
    """Open event streams from ``address`` as asked (``open(path)``); yields
    the list their statuses are put in; every stream is closed at the end."""
    transport = httpx.AsyncHTTPTransport(local_address=address, verify=TRUST)
    async with httpx.AsyncClient(base_url=server.url, transport=transport, timeout=10) as client, \
            contextlib.AsyncExitStack() as stack:
        statuses: list[int] = []

        async def open_stream(path: str = "/api/listen/events") -> httpx.Response:
            r = await stack.enter_async_context(client.stream("GET", path))
            statuses.append(r.status_code)
            return r
        client.open_stream = open_stream   # type: ignore[attr-defined]
        yield client   # type: ignore[misc]


async def test_streams_per_address_and_in_all_are_bounded(tmp_path):
    config = make_config(tmp_path, max_event_streams=6, max_event_streams_per_client=4)
    async with open_server(config) as server:
        async with streams_from(server, "127.0.0.2") as one, \
                streams_from(server, "127.0.0.3") as two:
            for _ in range(4):
                assert (await one.open_stream()).status_code == 200
            refused = await one.open_stream()
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
            for _ in range(2):
                assert (await two.open_stream()).status_code == 200
            full = await two.open_stream()
            assert full.status_code == 503 and int(full.headers["Retry-After"]) >= 1
            assert len(server.service.feed.subscribers) == 6
        # the streams' ends give the room back
        with trio.fail_after(10):
            while server.service.feed.subscribers:
                await trio.sleep(0.05)
        async with streams_from(server, "127.0.0.2") as again:
            assert (await again.open_stream()).status_code == 200


async def test_a_stream_whose_client_stops_reading_leaves_the_fan_out(tmp_path, monkeypatch):
    """What a stream stuck writing to a client that does not read looks like
    to the feed: it stops taking its events. It is dropped (no more work for
    it on every level event) and closed."""
    monkeypatch.setattr(feed, "STALE_S", 1.0)
    async with open_server(make_config(tmp_path)) as server:
        service = server.service
        async with service.feed.subscribe("127.0.0.9") as stuck, \
                service.feed.subscribe("127.0.0.10") as reading:
            await stuck.next_batch(0.1)             # it took one batch, then its writes block
            with trio.fail_after(5):
                while not stuck.closed:
                    await reading.next_batch(0.2)   # this one keeps reading
            assert stuck not in service.feed.subscribers
            assert reading in service.feed.subscribers and not reading.closed


async def test_head_on_an_event_stream_answers_at_once(server):
    for path in ("/api/listen/events", "/api/events"):
        with trio.fail_after(5):
            r = await server.client.head(path)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert not server.service.feed.subscribers
