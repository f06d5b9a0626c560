"""A listener's whole life: WHEP sessions from the offer to the last cleanup.

    Sessions.open(target, offer)
      service nursery
        session task (one per listener)      started with nursery.start()
          engine.open_listener(...)          its own event channel
          wait for the answer (bounded)      -> task_status.started(answer)
          watchers nursery                   engine events, liveness
          finally (shielded, deadline)       the one cleanup path

Every way a session ends (DELETE, expiry, ICE failed/closed, answer timeout,
a crash inside it, shutdown) goes through the same ``finally``: the engine
listener, its temporary sink and route, its share of a hearing variant, the
registry entry. Also here: admission. The listener cap, a POST rate per
client address, at most ``max_connecting_per_client`` sessions still
connecting per client (IPv6: per /64), a session that has not connected
``connect_timeout_s`` after its answer gives its slot back, and at the cap
the oldest session still connecting is ended before a new listener is
refused: slots go to listeners that connect.

Hearing variants: a listener may ask for a ``Variant`` of its channel (mono,
clear speech, balance). Each variant in use is one engine sink derived from
the channel's mix (``Engine.add_variant``), shared by every listener of it:
created by the first, removed by the cleanup of the last, counted under one
lock so a sink is never created twice nor removed while someone joins it.
"""
from __future__ import annotations

import collections
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import trio

from .admin_auth import client_key
from .config import Config
from .engine import Engine, EngineError, ErrorCode, Listener, ListenerStats, engine_error
from .errors import (
    AnswerTimeoutError, ApplianceError, ClosingError, FullError, InvalidError, NotFoundError,
    RateLimitedError,
)
from .events import (
    AnswerFailed, AnswerReady, CandidateGathered, ListenerState, ListenerStateChanged,
)
from .model import RouteSpec, SinkSpec, Variant
from .sdp import Offer

__all__ = ["Session", "Sessions", "DerivedSink", "TEMP_PREFIX", "CLEANUP_TIMEOUT_S"]

log = logging.getLogger(__name__)

CLEANUP_TIMEOUT_S = 5.0
# ids of the temporary sinks and routes of listeners to a source or a route
TEMP_PREFIX = "_listen-"
RETRY_AFTER_S = 10
# a silent session ends this long after its timeout at most: the watcher wakes
# just past the moment it can expire
EXPIRY_SLACK_S = 0.1
# a DELETE this soon after a session ended by itself (its peer's DTLS close
# notice often comes first) is answered 200, as for a live one; at most this
# many ended sessions are remembered
ENDED_MEMORY_S = 60.0
ENDED_MEMORY_COUNT = 4096


@dataclass(frozen=True)
class DerivedSink:
    """A sink made for listeners, not by the admin: a listener's temporary
    sink for a source or a route (no ``parent``; ``key`` is random), or a
    hearing variant of a channel or of a temporary sink (``parent`` is its
    sink, ``key`` the variant's: one sink for every way of asking for it).
    Code asks these fields; only ``id`` and ``is_derived`` know how the
    engine names it, so nobody takes an id string apart."""
    parent: str | None
    key: str

    @classmethod
    def temporary(cls) -> DerivedSink:
        return cls(None, secrets.token_hex(6))

    @classmethod
    def variant(cls, parent: str, variant: Variant) -> DerivedSink:
        return cls(parent, variant.key)

    @property
    def id(self) -> str:
        """Its engine sink (and route) id: hidden from the admin's lists and
        counted by the census like every derived entity."""
        if self.parent is None:
            return f"{TEMP_PREFIX}{self.key}"
        return f"{TEMP_PREFIX}{self.parent}~{self.key}"

    @staticmethod
    def is_derived(entity_id: str) -> bool:
        """Whether an engine sink or route id is one of these."""
        return entity_id.startswith(TEMP_PREFIX)


@dataclass(eq=False)
class Session:
    """One WHEP listener. ``id`` is the unguessable last segment of its URL."""
    id: str
    sink_id: str                     # the engine sink the listener is on
    target: tuple[str, str]          # ("sink"|"source"|"route", id)
    client: str
    offer: Offer
    etag: str = field(default_factory=lambda: f'"{secrets.token_hex(12)}"')
    created: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    listener: Listener | None = None
    base_sink: str = ""              # the channel (or temporary sink) before any variant
    variant: Variant = field(default_factory=Variant)
    temporary: DerivedSink | None = None   # a source's or route's, this session's own
    temp_sink: str | None = None     # set once the temporary sink is made
    temp_route: str | None = None
    variant_sink: DerivedSink | None = None   # set while this session holds a share of it
    state: ListenerState = ListenerState.NEW
    stats: ListenerStats | None = None   # the latest read (liveness watcher, health)
    answered: bool = False
    connected: bool = False          # its peer connected once (the slot is a listener's)
    client_key: str = ""             # what admission counts it under (admin_auth.client_key)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    end_reason: str | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"/api/whep/{self.sink_id}/{self.id}"

    @property
    def remote_ufrag(self) -> str | None:
        return self.offer.ice_ufrag

    def mid_for(self, mline: int) -> str:
        mids = self.offer.mids
        return mids[mline] if 0 <= mline < len(mids) else str(mline)

    def mline_for(self, mid: str | None, index: int | None) -> int:
        """The m-line a trickled candidate is for, by mid or index."""
        mids = self.offer.mids
        if mid is not None:
            if mid not in mids:
                raise InvalidError(f"no m-line with mid {mid!r}")
            return mids.index(mid)
        if index is not None:
            if not 0 <= index < len(mids):
                raise InvalidError(f"no m-line {index}")
            return index
        return self.offer.audio

    def end(self, reason: str) -> None:
        """Ask the session to end (from the trio thread); its cleanup follows."""
        if self.end_reason is None:
            self.end_reason = reason
        self.cancel_scope.cancel()

    def read_stats(self) -> ListenerStats:
        """The listener's stats now (one engine call); kept as ``stats``."""
        if self.listener is None:
            raise engine_error(ErrorCode.NOT_FOUND, "no listener yet")
        stats = self.listener.stats()
        self.state, self.stats = stats.state, stats
        return stats

    def health(self) -> dict[str, Any]:
        """What the admin page shows of one listener (no secrets: the id is
        cut). Read when asked, so it is current; the liveness watcher reads
        the stats only when the session could have expired."""
        try:
            self.read_stats()
        except EngineError:
            pass   # the listener is gone and the session's cleanup under way: the last ones
        s = self.stats
        return {"session": self.id[:8], "kind": self.target[0], "id": self.target[1],
                "client": self.client, "state": self.state.value,
                "age_s": round(time.monotonic() - self.created, 1),
                "transport": s.transport if s else None,
                # without it Chromium plays a stereo channel as mono
                "stereo_offered": self.offer.stereo,
                "packets_sent": s.packets_sent if s else 0,
                "fraction_lost": s.fraction_lost if s else None,
                "jitter_ms": s.jitter_ms if s else None,
                "rtt_ms": s.rtt_ms if s else None}

    def heartbeat(self) -> None:
        self.last_heartbeat = time.monotonic()

    def add_candidates(self, candidates: Iterable[tuple[int, str]]) -> None:
        for mline, candidate in candidates:
            try:
                if self.listener is None:
                    raise engine_error(ErrorCode.NOT_FOUND, "no such session")
                self.listener.add_candidate(mline, candidate)
            except EngineError as error:
                if error.code == ErrorCode.NOT_FOUND:
                    raise NotFoundError("no such session") from None
                raise InvalidError(f"candidate refused: {error.message}") from None

    def take_candidates(self) -> list[dict[str, Any]]:
        """Server candidates gathered after the answer; each returned once."""
        out, self.candidates = self.candidates, []
        return out


class Sessions:
    """The listener sessions of one service. ``changed`` is called whenever
    the set of answered sessions changes (the live feed's listener counts)."""

    def __init__(self, config: Config, engine: Engine, nursery: trio.Nursery,
                 changed: Callable[[], None] = lambda: None):
        self.config = config
        self.engine = engine
        self._nursery = nursery
        self._changed = changed
        self.by_id: dict[str, Session] = {}
        self.closing = False
        self._buckets: dict[str, tuple[float, float]] = {}
        self.variant_users: dict[str, int] = {}   # variant sink -> sessions holding it
        self.variants: dict[str, DerivedSink] = {}   # the same sinks, as values
        self._variant_lock = trio.Lock()
        # session id -> (its sink, when it ended), oldest first
        self._ended: collections.OrderedDict[str, tuple[str, float]] = \
            collections.OrderedDict()
        # client key -> its sessions still connecting (kept as they change:
        # admission reads it at every POST, a thousand sessions deep)
        self._connecting: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self):
        return iter(list(self.by_id.values()))

    def answered(self) -> list[Session]:
        return [s for s in self.by_id.values() if s.answered]

    def find(self, sink_id: str, session_id: str) -> Session:
        session = self.by_id.get(session_id)
        if session is None or session.sink_id != sink_id or not session.answered:
            raise NotFoundError("no such session")
        return session

    async def delete(self, sink_id: str, session_id: str) -> None:
        """A client's DELETE: end the session and wait for its cleanup. One
        that ended moments ago by itself is deleted already: no error."""
        try:
            session = self.find(sink_id, session_id)
        except NotFoundError:
            now = time.monotonic()
            ended = self._ended.get(session_id)
            if ended is not None and ended[0] == sink_id and now - ended[1] < ENDED_MEMORY_S:
                return
            raise
        await self.close(session, "deleted")

    def _remember_ended(self, session: Session) -> None:
        now = time.monotonic()
        self._ended[session.id] = (session.sink_id, now)
        while self._ended and (len(self._ended) > ENDED_MEMORY_COUNT
                               or now - next(iter(self._ended.values()))[1] > ENDED_MEMORY_S):
            self._ended.popitem(last=False)

    # ---- admission -------------------------------------------------------------

    def check_post_rate(self, client: str) -> None:
        """A token bucket per client address for WHEP POSTs."""
        cfg = self.config.server
        now = time.monotonic()
        tokens, stamp = self._buckets.get(client, (float(cfg.post_burst), now))
        tokens = min(float(cfg.post_burst), tokens + (now - stamp) * cfg.post_rate_per_s)
        if tokens < 1.0:
            retry = max(1, math.ceil((1.0 - tokens) / cfg.post_rate_per_s))
            self._buckets[client] = (tokens, now)
            raise RateLimitedError("too many requests from this address", retry_after_s=retry)
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > 4096:  # forget clients whose buckets are full again
            full = [c for c, (t, s) in self._buckets.items()
                    if t + (now - s) * cfg.post_rate_per_s >= cfg.post_burst]
            for c in full:
                del self._buckets[c]

    def full(self) -> bool:
        """Whether a new listener would be refused now: at the cap with no
        session still connecting to make room for it (``_admit``)."""
        return len(self.by_id) >= self.config.server.max_listeners and \
            self._oldest_connecting() is None

    def connecting(self) -> list[Session]:
        """Sessions whose peer has not connected yet, oldest first (``by_id``
        keeps the order they were opened in)."""
        return [s for s in self.by_id.values() if not s.connected and s.end_reason is None]

    def _oldest_connecting(self) -> Session | None:
        """The oldest answered session whose peer has not connected, as the
        engine sees it now: on a busy box a listener's "connected" event may
        still be on its way here while its peer already hears the channel,
        and such a listener must be neither evicted nor counted as room."""
        for session in self.connecting():
            if not session.answered:
                continue
            try:
                live = session.read_stats().state.is_live
            except EngineError:
                return session   # its listener is gone: the slot is free to take
            if not live:
                return session
            self._connected(session)
        return None

    def _connected(self, session: Session) -> None:
        """Its peer connected (DTLS done): its slot is a listener's now."""
        if not session.connected:
            session.connected = True
            self._forget_connecting(session.client_key)

    def _forget_connecting(self, key: str) -> None:
        self._connecting[key] -= 1
        if self._connecting[key] <= 0:
            del self._connecting[key]

    async def _admit(self, key: str) -> None:
        """Room for one more session from the client ``key``, or the error
        that says why not. At the cap, the oldest session still connecting
        is ended (and waited for) first: a listener that connects is worth
        more."""
        cfg = self.config.server
        if self._connecting[key] >= cfg.max_connecting_per_client:
            raise RateLimitedError(f"{cfg.max_connecting_per_client} listeners from this address "
                                   "are still connecting",
                                   retry_after_s=max(1, math.ceil(cfg.connect_timeout_s)))
        while len(self.by_id) >= cfg.max_listeners:
            oldest = self._oldest_connecting()
            if oldest is None:
                raise FullError("the listener limit is reached", retry_after_s=RETRY_AFTER_S)
            log.info("session %s evicted: still connecting at the listener cap", oldest.id[:8])
            await self.close(oldest, "evicted")

    async def open(self, target: tuple[str, str], offer: Offer, client: str,
                   temporary_route: RouteSpec | None = None,
                   variant: Variant = Variant()) -> tuple[Session, str]:
        """Start a listener for ``target`` (("sink"|"source"|"route", id));
        returns the session and its answer once the engine answered. A
        listener to a source or a route gets a temporary sink fed by
        ``temporary_route`` (whose sink_id is filled in here); one asking
        for a ``variant`` gets that variant's shared sink."""
        if self.closing:
            raise ClosingError("the appliance is shutting down", retry_after_s=RETRY_AFTER_S)
        key = client_key(client)
        await self._admit(key)
        kind, ident = target
        temporary = None if kind == "sink" else DerivedSink.temporary()
        base = ident if temporary is None else temporary.id
        sink_id = base if variant.plain else DerivedSink.variant(base, variant).id
        session = Session(id=secrets.token_urlsafe(24), sink_id=sink_id, target=target,
                          client=client, offer=offer, base_sink=base, variant=variant,
                          temporary=temporary, client_key=key)
        self.by_id[session.id] = session
        self._connecting[key] += 1
        try:
            answer = await self._nursery.start(self._run, session, temporary_route)
        except BaseException:
            # the task ended before it started: its cleanup has run
            self.by_id.pop(session.id, None)
            raise
        return session, answer

    # ---- one session's life ----------------------------------------------------

    async def _run(self, session: Session, temporary_route: RouteSpec | None, *,
                   task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with session.cancel_scope:
                if temporary_route is not None:
                    await self._make_temporary(session, temporary_route)
                if not session.variant.plain:
                    await self._take_variant(session)
                session.listener = self.engine.start_listener(session.sink_id,
                                                              session.offer.sdp)
                answer = await self._wait_answer(session)
                session.answered = True
                session.heartbeat()
                task_status.started(answer)
                self._changed()
                try:
                    async with trio.open_nursery() as watchers:
                        watchers.start_soon(self._watch_events, session)
                        watchers.start_soon(self._watch_liveness, session)
                        watchers.start_soon(self._watch_connecting, session)
                except* Exception as crash:  # never into the service nursery; Cancelled passes
                    session.end_reason = session.end_reason or "crashed"
                    log.error("listener session %s crashed", session.id[:8], exc_info=crash)
            if not session.answered:  # ended while it waited for the answer
                if session.end_reason == "shutdown":
                    raise ClosingError("the appliance is shutting down",
                                       retry_after_s=RETRY_AFTER_S)
                raise ApplianceError(f"the session ended before its answer: "
                                     f"{session.end_reason}")
        finally:
            if session.end_reason is None:
                session.end_reason = "shutdown" if self.closing else "ended"
            with trio.CancelScope(shield=True) as shield:
                shield.deadline = trio.current_time() + CLEANUP_TIMEOUT_S
                await self._cleanup(session)
            if shield.cancelled_caught:
                log.error("cleanup of session %s timed out", session.id[:8])

    async def _make_temporary(self, session: Session, route: RouteSpec) -> None:
        cfg = self.config.server
        assert session.temporary is not None
        temp = session.temporary.id
        # mixed only once the listener has connected (made at the POST,
        # its answer needs the sink's stream)
        await self.engine.add_sink(temp, SinkSpec(
            kind="opus", frame_ms=cfg.listen_frame_ms, bitrate=cfg.listen_bitrate),
            on_demand=True)
        session.temp_sink = temp
        await self.engine.add_route(temp, RouteSpec(
            route.source_id, temp, route.gain_db, route.muted, route.source_channel))
        session.temp_route = temp

    async def _take_variant(self, session: Session) -> None:
        """A share of the session's variant sink, made by the first taker."""
        derived = DerivedSink.variant(session.base_sink, session.variant)
        sink_id = derived.id
        async with self._variant_lock:
            users = self.variant_users.get(sink_id, 0)
            # a sink whose removal failed once is taken over, not made again
            if users == 0 and sink_id not in self.engine.sinks():
                await self.engine.add_variant(sink_id, session.base_sink, session.variant,
                                              on_demand=True)
            self.variant_users[sink_id] = users + 1
            self.variants[sink_id] = derived
            session.variant_sink = derived

    async def _drop_variant(self, derived: DerivedSink) -> None:
        """Give a share back; the last one removes the sink. Only from the
        shielded cleanup, after the session's listener is gone."""
        sink_id = derived.id
        async with self._variant_lock:
            users = self.variant_users.pop(sink_id, 1) - 1
            if users > 0:
                self.variant_users[sink_id] = users
                return
            self.variants.pop(sink_id, None)
            await self.engine.remove_sink(sink_id)

    def variants_of(self, sink_id: str) -> list[str]:
        """The hearing-variant sinks made of ``sink_id`` that listeners hold."""
        return [v.id for v in self.variants.values() if v.parent == sink_id]

    async def _wait_answer(self, session: Session) -> str:
        assert session.listener is not None
        timeout = self.config.server.answer_timeout_s
        with trio.move_on_after(timeout):
            async for event in session.listener.events:
                if isinstance(event, AnswerReady):
                    return event.sdp
                if isinstance(event, AnswerFailed):
                    session.end_reason = "answer failed"
                    if event.code == ErrorCode.SDP:
                        raise InvalidError(event.reason or "the offer was refused")
                    raise ApplianceError(f"the engine could not answer: {event.reason}")
                self._on_event(session, event)
        session.end_reason = "answer timeout"
        raise AnswerTimeoutError(f"no answer within {timeout:g} s")

    def _on_event(self, session: Session, event: Any) -> None:
        if isinstance(event, CandidateGathered):
            session.candidates.append({"candidate": event.candidate,
                                       "sdpMid": session.mid_for(event.mline_index),
                                       "sdpMLineIndex": event.mline_index})
            del session.candidates[:-64]   # a client that never polls holds at most this
        elif isinstance(event, ListenerStateChanged):
            session.state = event.state
            if event.state.is_live:
                self._connected(session)
            if event.state.is_final:
                session.end(f"ice {event.state.value}")
        elif not isinstance(event, (AnswerReady, AnswerFailed)):   # those: late duplicates
            raise TypeError(f"unexpected event for a listener: {event!r}")

    async def _watch_events(self, session: Session) -> None:
        assert session.listener is not None
        async for event in session.listener.events:
            self._on_event(session, event)

    async def _watch_connecting(self, session: Session) -> None:
        """End a session whose peer has not connected in time: its slot (and
        whatever it holds in the engine) goes back."""
        await trio.sleep(self.config.server.connect_timeout_s)
        if not session.connected:
            session.end("not connected in time")

    async def _watch_liveness(self, session: Session) -> None:
        """End the session after ``session_timeout_s`` with neither a heartbeat
        nor any packet from the peer (ICE consent checks, RTCP). It wakes
        only when the session could have expired, its last sign of life plus
        the timeout: a live peer shows one every few seconds, so a listener
        costs one wake-up and one stats read per timeout, not five (a
        thousand listeners kept the trio thread waking a thousand times a
        second). State changes come by event (``_watch_events``)."""
        timeout = self.config.server.session_timeout_s
        wait = timeout   # the session has just been answered and heard from
        while True:
            await trio.sleep(wait + EXPIRY_SLACK_S)
            try:
                stats = session.read_stats()
            except EngineError:
                session.end("engine lost the listener")
                return
            if stats.state.is_final:
                session.end(f"ice {stats.state.value}")
                return
            now = time.monotonic()
            rx_age = stats.last_rx_age_s if stats.last_rx_age_s is not None \
                else now - session.created
            idle = min(rx_age, now - session.last_heartbeat)
            if idle > timeout:
                log.info("session %s expired: last packet %.1f s ago, last heartbeat %.1f s ago",
                         session.id[:8], rx_age, now - session.last_heartbeat)
                session.end("expired")
                return
            wait = timeout - idle

    async def _cleanup(self, session: Session) -> None:
        if self.by_id.pop(session.id, None) is not None and not session.connected:
            self._forget_connecting(session.client_key)
        session.candidates.clear()
        steps: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []
        if session.listener is not None:
            steps.append(("listener", session.listener.aclose, ()))
        if session.variant_sink is not None:   # before the temporary sink it derives from
            steps.append(("variant", self._drop_variant, (session.variant_sink,)))
        if session.temp_route is not None:
            steps.append(("route", self.engine.remove_route, (session.temp_route,)))
        if session.temp_sink is not None:
            steps.append(("sink", self.engine.remove_sink, (session.temp_sink,)))
        for what, remove, args in steps:
            try:
                await remove(*args)
            except EngineError as error:
                if error.code != ErrorCode.NOT_FOUND:
                    log.error("session %s: removing its %s failed: %s",
                              session.id[:8], what, error)
            except Exception:  # the next steps must still run
                log.exception("session %s: removing its %s failed", session.id[:8], what)
        log.info("session %s on %s ended: %s", session.id[:8], session.sink_id, session.end_reason)
        session.done.set()
        if session.answered:
            self._remember_ended(session)
            self._changed()

    async def close(self, session: Session, reason: str = "deleted") -> None:
        """End a session and wait until it is cleaned up."""
        session.end(reason)
        with trio.move_on_after(CLEANUP_TIMEOUT_S + 1):
            await session.done.wait()

    async def aclose(self) -> None:
        """Refuse new sessions, end every one and wait (bounded) for cleanup."""
        self.closing = True
        sessions = list(self.by_id.values())
        for session in sessions:
            session.end("shutdown")
        with trio.move_on_after(self.config.server.shutdown_timeout_s):
            for session in sessions:
                await session.done.wait()
