"""The live feed: what the admin page shows as it happens. It reads the
engine's events (levels, device lost/restored, xruns), keeps the latest
state per source and sink, and fans it out to subscribers (SSE streams).

Subscribers are bounded, since anyone who may listen may open one: at most
``max_streams`` in all and ``max_streams_per_client`` per client address
(IPv6: per /64), and one that has not taken what it was sent for
``STALE_S`` (its client does not read: its stream is stuck writing) is
dropped from the fan-out at once and its stream ends. 8,000 streams that
never read kept the event loop so busy that /healthz took 17-35 s."""
from __future__ import annotations

import collections
import logging
import math
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import trio

from .admin_auth import client_key
from .engine import Engine
from .errors import FullError, RateLimitedError
from .events import DeviceLost, DeviceRestored, Event, LevelsMeasured, XrunOccurred

__all__ = ["Feed", "Subscriber"]

log = logging.getLogger(__name__)

# a subscriber that has not taken its events for this long is dropped
STALE_S = 5.0
RETRY_AFTER_S = 10


class Subscriber:
    """One live-event stream (SSE). Level updates coalesce (the newest per
    entity wins); other events queue, the oldest dropped past ``limit``."""

    def __init__(self, client: str = "", limit: int = 256):
        self.client = client                 # its client_key
        self.pending: collections.deque[tuple[str, Any]] = collections.deque(maxlen=limit)
        self.levels: dict[str, dict[str, Any]] = {"sources": {}, "sinks": {}}
        self._wake = trio.Event()
        self.closed = False
        self.waiting = False                 # in next_batch: it keeps up
        self.taken_at = trio.current_time()  # when it last took its events

    def push(self, name: str, data: Any) -> None:
        self.pending.append((name, data))
        self._wake.set()

    def push_levels(self, kind: str, entity_id: str, value: dict[str, Any]) -> None:
        self.levels[kind + "s"][entity_id] = value
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next_batch(self, timeout: float) -> list[tuple[str, Any]]:
        """Wait (at most ``timeout``) for something to send; returns it."""
        self.waiting = True
        try:
            with trio.move_on_after(timeout):
                await self._wake.wait()
        finally:
            self.waiting = False
            self.taken_at = trio.current_time()
        self._wake = trio.Event()
        out = list(self.pending)
        self.pending.clear()
        if self.levels["sources"] or self.levels["sinks"]:
            out.append(("levels", self.levels))
            self.levels = {"sources": {}, "sinks": {}}
        return out


def _finite(value: float) -> float:
    return round(value, 1) if math.isfinite(value) else -120.0


class Feed:
    """``shown(kind, id)`` says whether an entity is the admin's to see (a
    listener's temporary sink is not); ``listener_counts()`` gives the
    ``listeners`` event."""

    def __init__(self, engine: Engine, shown: Callable[[str, str], bool],
                 listener_counts: Callable[[], dict[str, Any]], *,
                 max_streams: int = 256, max_streams_per_client: int = 4):
        self.engine = engine
        self.max_streams, self.max_streams_per_client = max_streams, max_streams_per_client
        self._shown = shown
        self._listener_counts = listener_counts
        self.devices: dict[tuple[str, str], dict[str, Any]] = {}
        self.xruns: dict[tuple[str, str], int] = {}
        self.levels: dict[tuple[str, str], dict[str, Any]] = {}
        self.subscribers: set[Subscriber] = set()
        self.closed = False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drop_stale)
            async for event in self.engine.events:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("handling %r failed", event)
            nursery.cancel_scope.cancel()

    async def _drop_stale(self) -> None:
        """Once a second: subscribers whose client stopped reading leave the
        fan-out (each one cost every event a push) and their streams end."""
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            for sub in [s for s in self.subscribers
                        if not s.waiting and now - s.taken_at > STALE_S]:
                log.info("an event stream from %s does not read: dropped", sub.client)
                self.subscribers.discard(sub)
                sub.close()

    def check_room(self, client: str) -> None:
        """Raise unless ``client`` may open one more stream now."""
        if len(self.subscribers) >= self.max_streams:
            raise FullError("too many live-event streams are open", retry_after_s=RETRY_AFTER_S)
        key = client_key(client)
        if sum(s.client == key for s in self.subscribers) >= self.max_streams_per_client:
            raise RateLimitedError(f"{self.max_streams_per_client} live-event streams from this "
                                   "address are open", retry_after_s=RETRY_AFTER_S)

    def _on_event(self, event: Event) -> None:
        key = (event.kind, event.entity_id)
        if not self._shown(*key):
            return
        if isinstance(event, LevelsMeasured):
            value = {"peak_dbfs": [_finite(v) for v in event.peak_dbfs],
                     "rms_dbfs": [_finite(v) for v in event.rms_dbfs]}
            self.levels[key] = value
            for sub in self.subscribers:
                sub.push_levels(event.kind, event.entity_id, value)
        elif isinstance(event, XrunOccurred):
            self.xruns[key] = event.total
            self._broadcast("xrun", {"kind": event.kind, "id": event.entity_id,
                                     "total": event.total})
        elif isinstance(event, (DeviceLost, DeviceRestored)):
            state = {"state": "lost", "reason": event.reason} \
                if isinstance(event, DeviceLost) else {"state": "ok"}
            self.devices[key] = state
            self._broadcast("device", {"kind": event.kind, "id": event.entity_id, **state})

    def forget(self, kind: str, entity_id: str) -> None:
        """The entity is gone: drop its state."""
        for table in (self.devices, self.xruns, self.levels):
            table.pop((kind, entity_id), None)

    def entity_state(self, kind: str, entity_id: str) -> dict[str, Any]:
        return {"device_state": self.devices.get((kind, entity_id)) or {"state": "ok"},
                "xruns": self.xruns.get((kind, entity_id), 0)}

    def _broadcast(self, name: str, data: Any) -> None:
        for sub in self.subscribers:
            sub.push(name, data)

    def listeners_changed(self) -> None:
        if self.subscribers:
            self._broadcast("listeners", self._listener_counts())

    @asynccontextmanager
    async def subscribe(self, client: str = "") -> AsyncIterator[Subscriber]:
        """A live-event stream, starting with the current listener counts and
        device states; closed at once when there is no room for it
        (``check_room`` tells before a response is sent)."""
        sub = Subscriber(client_key(client) if client else "")
        try:
            self.check_room(client)
            room = True
        except (FullError, RateLimitedError):
            room = False
        sub.push("listeners", self._listener_counts())
        for (kind, ident), state in sorted(self.devices.items()):
            sub.push("device", {"kind": kind, "id": ident, **state})
        for (kind, ident), value in self.levels.items():
            sub.push_levels(kind, ident, value)
        if self.closed or not room:
            sub.close()
        else:
            self.subscribers.add(sub)
        try:
            yield sub
        finally:
            self.subscribers.discard(sub)

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.close()
