"""Publishers: WHIP (RFC 9725) into a whip source, from the offer to the last
cleanup.

    Publishers.open(source, offer)
      service nursery
        publisher task (one per source at most)   started with nursery.start()
          engine.start_publisher(...)             answered at once (ICE-lite)
          watchers nursery                        its engine events, connect deadline
          finally (shielded, deadline)            the one cleanup path

A whip source takes one publisher at a time. Whoever holds its token may
publish, so a new publisher replaces the one before (an interpreter whose
laptop restarted is back at once, not locked out until the old session
times out). The engine ends a publisher whose media and consent checks stop
for ``consent_timeout_s``; its source then goes silent, is lost a second
later (its channels say so) and comes back with the next publisher.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from .config import Config
from .engine import Engine, Listener
from .errors import ClosingError, NotFoundError
from .events import AnswerReady, ListenerState, ListenerStateChanged
from .sdp import Offer

__all__ = ["Publisher", "Publishers", "check_publish_token"]

log = logging.getLogger(__name__)

CLEANUP_TIMEOUT_S = 5.0
RETRY_AFTER_S = 10


@dataclass(eq=False)
class Publisher:
    """One WHIP publisher. ``id`` is the unguessable last segment of its URL."""
    id: str
    source_id: str
    client: str
    offer: Offer
    etag: str = field(default_factory=lambda: f'"{secrets.token_hex(12)}"')
    created: float = field(default_factory=time.monotonic)
    listener: Listener | None = None
    state: ListenerState = ListenerState.NEW
    connected: bool = False
    end_reason: str | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"/api/whip/{self.source_id}/{self.id}"

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self.cancel_scope.cancel()

    def status(self) -> dict[str, Any]:
        return {"client": self.client, "state": self.state.value, "connected": self.connected,
                "since_s": round(time.monotonic() - self.created, 1)}


class Publishers:
    """The publishers of one service, by source."""

    def __init__(self, config: Config, engine: Engine, nursery: trio.Nursery):
        self.config = config
        self.engine = engine
        self._nursery = nursery
        self.by_source: dict[str, Publisher] = {}
        self.closing = False
        self._opening = trio.Lock()   # one replacement at a time: none is left running unseen

    def __len__(self) -> int:
        return len(self.by_source)

    def find(self, source_id: str, publisher_id: str) -> Publisher:
        publisher = self.by_source.get(source_id)
        if publisher is None or not secrets.compare_digest(publisher.id, publisher_id):
            raise NotFoundError("no such publisher")
        return publisher

    async def open(self, source_id: str, offer: Offer, client: str) -> tuple[Publisher, str]:
        """Start publishing into ``source_id`` (replacing whoever published
        there); returns the publisher and the answer."""
        if self.closing:
            raise ClosingError("the appliance is shutting down", retry_after_s=RETRY_AFTER_S)
        async with self._opening:
            before = self.by_source.get(source_id)
            if before is not None:
                log.info("publisher %s on %s replaced by a new one", before.id[:8], source_id)
                await self.close(before, "replaced")
            publisher = Publisher(id=secrets.token_urlsafe(24), source_id=source_id,
                                  client=client, offer=offer)
            answer = await self._nursery.start(self._run, publisher)
        return publisher, answer

    async def _run(self, publisher: Publisher, *,
                   task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with publisher.cancel_scope:
                publisher.listener = self.engine.start_publisher(publisher.source_id,
                                                                 publisher.offer.sdp)
                answer = publisher.listener.events.receive_nowait()
                assert isinstance(answer, AnswerReady)
                self.by_source[publisher.source_id] = publisher
                task_status.started(answer.sdp)
                log.info("publisher %s on %s from %s", publisher.id[:8], publisher.source_id,
                         publisher.client)
                try:
                    async with trio.open_nursery() as watchers:
                        watchers.start_soon(self._watch_events, publisher)
                        watchers.start_soon(self._watch_connecting, publisher)
                except* Exception as crash:  # never into the service nursery
                    publisher.end_reason = publisher.end_reason or "crashed"
                    log.error("publisher %s crashed", publisher.id[:8], exc_info=crash)
        finally:
            if publisher.end_reason is None:
                publisher.end_reason = "shutdown" if self.closing else "ended"
            with trio.CancelScope(shield=True) as shield:
                shield.deadline = trio.current_time() + CLEANUP_TIMEOUT_S
                await self._cleanup(publisher)

    async def _watch_events(self, publisher: Publisher) -> None:
        assert publisher.listener is not None
        async for event in publisher.listener.events:
            if isinstance(event, ListenerStateChanged):
                publisher.state = event.state
                publisher.connected = publisher.connected or event.state.is_live
                if event.state.is_final:
                    publisher.end(f"ice {event.state.value}")

    async def _watch_connecting(self, publisher: Publisher) -> None:
        await trio.sleep(self.config.server.connect_timeout_s)
        if not publisher.connected:
            publisher.end("not connected in time")

    async def _cleanup(self, publisher: Publisher) -> None:
        if self.by_source.get(publisher.source_id) is publisher:
            del self.by_source[publisher.source_id]
        if publisher.listener is not None:
            try:
                await publisher.listener.aclose()
            except Exception:
                log.exception("publisher %s: removing it failed", publisher.id[:8])
        log.info("publisher %s on %s ended: %s", publisher.id[:8], publisher.source_id,
                 publisher.end_reason)
        publisher.done.set()

    async def close(self, publisher: Publisher, reason: str = "deleted") -> None:
        """End a publisher and wait until it is cleaned up."""
        publisher.end(reason)
        with trio.move_on_after(CLEANUP_TIMEOUT_S + 1):
            await publisher.done.wait()

    def end_for(self, source_id: str, reason: str) -> None:
        """The source is going: its publisher ends (cleanup follows)."""
        publisher = self.by_source.get(source_id)
        if publisher is not None:
            publisher.end(reason)

    def status(self) -> dict[str, dict[str, Any]]:
        return {source_id: p.status() for source_id, p in self.by_source.items()}

    async def aclose(self) -> None:
        self.closing = True
        publishers = list(self.by_source.values())
        for publisher in publishers:
            publisher.end("shutdown")
        with trio.move_on_after(self.config.server.shutdown_timeout_s):
            for publisher in publishers:
                await publisher.done.wait()


def check_publish_token(expected: str, given: str | None) -> bool:
    """The publish token, compared in constant time; nothing matches an
    empty one."""
    if not expected or given is None:
        return False
    return secrets.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))

