"""The service layer between the web app and the engine: listener sessions,
the engine-event dispatcher, the audio graph with names, and the registries.

Structure (see ARCHITECTURE.md section 4)::

    open_service(config)
      open_engine(...)                       the engine lives longest
        service nursery
          dispatcher                         engine.events -> sessions / subscribers
          session task (one per listener)    started with nursery.start()
            watchers nursery                 engine events, liveness
            finally (shielded, deadline)     the one cleanup path

Every way a session ends (DELETE, expiry, ICE failed/closed, answer timeout,
a crash inside it, shutdown) goes through ``_cleanup``: engine listener,
pending candidates, temporary sink and route, registry entries.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import re
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

import trio

from . import __version__
from .config import Config, ConfigError, RouteConfig, SinkConfig, SourceConfig, check_id
from .engine import (
    Engine, EngineError, ErrorCode, RouteSpec, SinkSpec, SourceSpec, open_engine,
)
from .events import (
    AnswerFailed, AnswerReady, CandidateGathered, DeviceLost, DeviceRestored, Event,
    LevelsMeasured, ListenerState, ListenerStateChanged, XrunOccurred,
)
from .store import Graph, Store, StoreError

__all__ = ["open_service", "Service", "Session", "Subscriber", "ServiceError", "NotFoundError",
           "BadRequestError", "ConflictError", "CapacityError", "RateLimitedError",
           "AnswerTimeoutError", "PreconditionRequiredError", "PreconditionFailedError",
           "UnsupportedError", "parse_sdpfrag"]

log = logging.getLogger(__name__)

CLEANUP_TIMEOUT_S = 5.0
TEMP_PREFIX = "_listen-"


# ---- errors: one per thing the web layer branches on (its HTTP status) -------

class ServiceError(Exception):
    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequestError(ServiceError):
    status = 400


class NotFoundError(ServiceError):
    status = 404


class ConflictError(ServiceError):
    status = 409


class PreconditionFailedError(ServiceError):
    status = 412


class UnsupportedError(ServiceError):
    status = 422


class PreconditionRequiredError(ServiceError):
    status = 428


class RateLimitedError(ServiceError):
    status = 429


class AnswerTimeoutError(ServiceError):
    status = 500


class CapacityError(ServiceError):
    status = 503


# ---- sessions --------------------------------------------------------------------

@dataclass(eq=False)
class Session:
    """One WHEP listener. ``id`` is the unguessable last segment of its URL."""
    id: str
    sink_id: str
    target: tuple[str, str]          # ("sink"|"source"|"route", id)
    client: str
    mids: list[str]                  # the offer's m-line mids, by m-line index
    remote_ufrag: str | None
    etag: str = field(default_factory=lambda: f'"{secrets.token_hex(12)}"')
    created: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    listener_id: int | None = None
    temp_sink: str | None = None
    temp_route: str | None = None
    state: ListenerState = ListenerState.NEW
    answered: bool = False
    candidates: list[dict[str, Any]] = field(default_factory=list)
    end_reason: str | None = None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Any](math.inf)

    @property
    def url(self) -> str:
        return f"/api/whep/{self.sink_id}/{self.id}"

    def mid_for(self, mline: int) -> str:
        return self.mids[mline] if 0 <= mline < len(self.mids) else str(mline)

    def end(self, reason: str) -> None:
        """Ask the session to end (from the trio thread); its cleanup follows."""
        if self.end_reason is None:
            self.end_reason = reason
        self.cancel_scope.cancel()


class Subscriber:
    """One live-event stream (SSE). Level updates coalesce (the newest per
    entity wins); other events queue, the oldest dropped past ``limit``."""

    def __init__(self, limit: int = 256):
        self.pending: collections.deque[tuple[str, Any]] = collections.deque(maxlen=limit)
        self.levels: dict[str, dict[str, Any]] = {"sources": {}, "sinks": {}}
        self._wake = trio.Event()
        self.closed = False

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
        with trio.move_on_after(timeout):
            await self._wake.wait()
        self._wake = trio.Event()
        out = list(self.pending)
        self.pending.clear()
        if self.levels["sources"] or self.levels["sinks"]:
            out.append(("levels", self.levels))
            self.levels = {"sources": {}, "sinks": {}}
        return out


# ---- SDP helpers ---------------------------------------------------------------

def _offer_facts(offer: str) -> tuple[list[str], str | None]:
    """The offer's mids (by m-line index) and its first ICE ufrag."""
    mids: list[str] = []
    ufrag = None
    section = -1
    for line in offer.splitlines():
        line = line.strip()
        if line.startswith("m="):
            section += 1
            mids.append(str(section))
        elif line.startswith("a=mid:") and section >= 0:
            mids[section] = line[len("a=mid:"):].strip()
        elif line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line[len("a=ice-ufrag:"):].strip()
    return mids, ufrag


def parse_sdpfrag(text: str) -> tuple[str | None, str | None, list[tuple[str | None, int | None, str]]]:
    """Parse an RFC 8840 trickle-ice-sdpfrag: returns (ufrag, pwd, [(mid,
    m-line index within the fragment, candidate)]); candidate "" is
    end-of-candidates."""
    ufrag = pwd = None
    out: list[tuple[str | None, int | None, str]] = []
    mid: str | None = None
    section: int | None = None
    saw_any = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        saw_any = True
        if not re.match(r"^[a-z]=", line):
            raise BadRequestError(f"not an SDP fragment line: {line[:60]!r}")
        if line.startswith("m="):
            section = 0 if section is None else section + 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:"):].strip()
            # a=mid may follow the candidates of its section
            out = [(mid if (s == section and m is None) else m, s, c) for m, s, c in out]
        elif line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:"):].strip()
        elif line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:"):].strip()
        elif line.startswith("a=candidate:"):
            out.append((mid, section, line[2:]))
        elif line.startswith("a=end-of-candidates"):
            out.append((mid, section, ""))
    if not saw_any:
        raise BadRequestError("empty SDP fragment")
    return ufrag, pwd, out


def _finite(value: float) -> float:
    return round(value, 1) if math.isfinite(value) else -120.0


# ---- the service --------------------------------------------------------------

class Service:
    """Create it with ``open_service``."""

    def __init__(self, config: Config, engine: Engine, nursery: trio.Nursery, store: Store):
        self.config = config
        self.engine = engine
        self.store = store
        self._nursery = nursery
        self.started_at = time.monotonic()
        self.sessions: dict[str, Session] = {}
        self.by_listener: dict[int, Session] = {}
        self.sources: dict[str, SourceConfig] = {}
        self.sinks: dict[str, SinkConfig] = {}
        self.routes: dict[str, RouteConfig] = {}
        self.devices: dict[tuple[str, str], dict[str, Any]] = {}
        self.xruns: dict[tuple[str, str], int] = {}
        self.levels: dict[tuple[str, str], dict[str, Any]] = {}
        self.subscribers: set[Subscriber] = set()
        self.closing = False
        self._graph_lock = trio.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}
        self.events_ignored = 0
        self.left_out: list[tuple[str, Any]] = []

    # ---- graph ---------------------------------------------------------

    async def _load_graph(self, graph: Graph) -> None:
        """Start the graph. An entity the engine refuses (a device that is
        gone, a file that moved) is logged and left out, with the routes that
        need it, so the appliance still comes up."""
        for kind, entities, add, registry in (
                ("source", graph.sources, self.engine.add_source, self.sources),
                ("sink", graph.sinks, self.engine.add_sink, self.sinks),
                ("route", graph.routes, self.engine.add_route, self.routes)):
            for entity in entities:
                if kind == "route" and (entity.spec.source_id not in self.sources
                                        or entity.spec.sink_id not in self.sinks):
                    log.error("route %s left out: its source or sink is missing", entity.id)
                    self.left_out.append((kind, entity))
                    continue
                try:
                    await add(entity.id, entity.spec)
                except EngineError as error:
                    log.error("%s %s left out: %s", kind, entity.id, error)
                    self.left_out.append((kind, entity))
                    continue
                registry[entity.id] = entity

    def graph(self) -> Graph:
        """The graph to persist: what runs, plus what could not start this
        time (kept, so a device missing at boot is not forgotten)."""
        def both(kind: str, registry: dict[str, Any]) -> tuple[Any, ...]:
            return tuple(registry.values()) + tuple(
                e for k, e in self.left_out if k == kind and e.id not in registry)
        return Graph(both("source", self.sources), both("sink", self.sinks),
                     both("route", self.routes))

    async def _persist(self) -> None:
        try:
            await self.store.save_graph(self.config, self.graph())
        except StoreError as error:
            log.error("%s", error)
            raise ServiceError(f"the change is live but was not saved: {error}") from None

    def _forget_left_out(self, kind: str, entity_id: str) -> bool:
        before = len(self.left_out)
        self.left_out = [(k, e) for k, e in self.left_out if (k, e.id) != (kind, entity_id)]
        return len(self.left_out) != before

    def _entity_json(self, kind: str, entity: Any) -> dict[str, Any]:
        out = {"id": entity.id, "name": entity.name, **dataclasses.asdict(entity.spec)}
        if kind in ("source", "sink"):
            device = self.devices.get((kind, entity.id))
            out["device_state"] = device or {"state": "ok"}
            out["xruns"] = self.xruns.get((kind, entity.id), 0)
        if kind == "sink":
            out["listeners"] = self.listener_counts()["sinks"].get(entity.id, 0)
        return out

    def list_entities(self, kind: str) -> list[dict[str, Any]]:
        registry = {"source": self.sources, "sink": self.sinks, "route": self.routes}[kind]
        return [self._entity_json(kind, e) for e in registry.values()]

    def get_entity(self, kind: str, entity_id: str) -> dict[str, Any]:
        registry = {"source": self.sources, "sink": self.sinks, "route": self.routes}[kind]
        if entity_id not in registry:
            raise NotFoundError(f"no {kind} {entity_id!r}")
        return self._entity_json(kind, registry[entity_id])

    @staticmethod
    def _spec(kind: str, spec_cls: type, fields: dict[str, Any]) -> Any:
        names = {f.name: f for f in dataclasses.fields(spec_cls)}
        for key in fields:
            if key not in names:
                raise BadRequestError(f"unknown {kind} field {key!r}")
        try:
            spec = spec_cls(**fields)
        except TypeError as error:
            raise BadRequestError(f"{kind}: {error}") from None
        for f in dataclasses.fields(spec_cls):
            value = getattr(spec, f.name)
            ann = str(f.type)
            if ann == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                   or not math.isfinite(value)):
                raise BadRequestError(f"{kind} field {f.name!r} must be a number")
            if ann == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise BadRequestError(f"{kind} field {f.name!r} must be an integer")
            if ann == "bool" and not isinstance(value, bool):
                raise BadRequestError(f"{kind} field {f.name!r} must be true or false")
            if ann == "str" and not isinstance(value, str):
                raise BadRequestError(f"{kind} field {f.name!r} must be a string")
        return spec

    @staticmethod
    def _new_id(kind: str, body: dict[str, Any]) -> tuple[str, str]:
        try:
            entity_id = check_id(kind, body.pop("id", None))
        except ConfigError as error:
            raise BadRequestError(str(error)) from None
        name = body.pop("name", entity_id)
        if not isinstance(name, str) or not name.strip():
            raise BadRequestError("name must be a non-empty string")
        return entity_id, name

    @staticmethod
    def _engine_error(error: EngineError) -> ServiceError:
        if error.code == ErrorCode.NOT_FOUND:
            return NotFoundError(error.message)
        if error.code in (ErrorCode.EXISTS, ErrorCode.BUSY):
            return ConflictError(error.message)
        if error.code in (ErrorCode.INVALID, ErrorCode.SDP, ErrorCode.CODEC, ErrorCode.FILE,
                          ErrorCode.DEVICE):
            return BadRequestError(error.message)
        if error.code == ErrorCode.LIMIT:
            return CapacityError(error.message, headers={"Retry-After": "10"})
        return ServiceError(error.message)

    async def create_source(self, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        entity_id, name = self._new_id("source", body)
        spec = self._spec("source", SourceSpec, body)
        async with self._graph_lock:
            if entity_id in self.sources:
                raise ConflictError(f"source {entity_id!r} exists already")
            try:
                await self.engine.add_source(entity_id, spec)
            except EngineError as error:
                raise self._engine_error(error) from None
            self.sources[entity_id] = SourceConfig(entity_id, name, spec)
            self._forget_left_out("source", entity_id)
            await self._persist()
        return self.get_entity("source", entity_id)

    async def create_sink(self, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        entity_id, name = self._new_id("sink", body)
        spec = self._spec("sink", SinkSpec, body)
        async with self._graph_lock:
            if entity_id in self.sinks:
                raise ConflictError(f"sink {entity_id!r} exists already")
            try:
                await self.engine.add_sink(entity_id, spec)
            except EngineError as error:
                raise self._engine_error(error) from None
            self.sinks[entity_id] = SinkConfig(entity_id, name, spec)
            self._forget_left_out("sink", entity_id)
            await self._persist()
        return self.get_entity("sink", entity_id)

    async def create_route(self, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        entity_id, name = self._new_id("route", body)
        spec = self._spec("route", RouteSpec, body)
        async with self._graph_lock:
            if entity_id in self.routes:
                raise ConflictError(f"route {entity_id!r} exists already")
            if spec.source_id not in self.sources:
                raise BadRequestError(f"no source {spec.source_id!r}")
            if spec.sink_id not in self.sinks:
                raise BadRequestError(f"no sink {spec.sink_id!r}")
            try:
                await self.engine.add_route(entity_id, spec)
            except EngineError as error:
                raise self._engine_error(error) from None
            self.routes[entity_id] = RouteConfig(entity_id, name, spec)
            self._forget_left_out("route", entity_id)
            await self._persist()
        return self.get_entity("route", entity_id)

    async def update_entity(self, kind: str, entity_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Change a name, a route's gain_db/muted, or a tone source's
        tone_hz/tone_dbfs. Other fields cannot change on a live entity."""
        registry = {"source": self.sources, "sink": self.sinks, "route": self.routes}[kind]
        allowed = {"source": {"name", "tone_hz", "tone_dbfs"}, "sink": {"name"},
                   "route": {"name", "gain_db", "muted"}}[kind]
        for key in body:
            if key not in allowed:
                raise BadRequestError(f"{kind} field {key!r} cannot be changed "
                                      f"(changeable: {', '.join(sorted(allowed))})")
        async with self._graph_lock:
            if entity_id not in registry:
                raise NotFoundError(f"no {kind} {entity_id!r}")
            entity = registry[entity_id]
            name = body.get("name", entity.name)
            if not isinstance(name, str) or not name.strip():
                raise BadRequestError("name must be a non-empty string")
            spec = entity.spec
            changes = {k: v for k, v in body.items() if k != "name"}
            if changes:
                spec = self._spec(kind, type(spec), {**dataclasses.asdict(spec), **changes})
                try:
                    if kind == "route":
                        self.engine.update_route(entity_id, gain_db=changes.get("gain_db"),
                                                 muted=changes.get("muted"))
                        for session in self.sessions.values():  # listeners of this route
                            if session.target == ("route", entity_id) and session.temp_route:
                                try:
                                    self.engine.update_route(session.temp_route,
                                                             gain_db=changes.get("gain_db"),
                                                             muted=changes.get("muted"))
                                except EngineError:
                                    pass  # the session is ending
                    elif kind == "source":
                        if spec.kind not in ("tone", "clicks"):
                            raise BadRequestError("only tone sources have tone_hz/tone_dbfs")
                        self.engine.set_tone(entity_id, spec.tone_hz, spec.tone_dbfs)
                except EngineError as error:
                    raise self._engine_error(error) from None
            registry[entity_id] = dataclasses.replace(entity, name=name, spec=spec)
            await self._persist()
        return self.get_entity(kind, entity_id)

    async def delete_entity(self, kind: str, entity_id: str) -> None:
        registry = {"source": self.sources, "sink": self.sinks, "route": self.routes}[kind]
        async with self._graph_lock:
            if entity_id not in registry:
                if self._forget_left_out(kind, entity_id):
                    await self._persist()
                    return
                raise NotFoundError(f"no {kind} {entity_id!r}")
            if kind == "sink":
                n = self.listener_counts()["sinks"].get(entity_id, 0)
                if n:
                    raise ConflictError(f"sink {entity_id!r} has {n} listener(s)")
            users = [r.id for r in self.routes.values()
                     if kind != "route" and getattr(r.spec, f"{kind}_id") == entity_id]
            if users:
                raise ConflictError(f"{kind} {entity_id!r} is used by route(s) {', '.join(users)}")
            try:
                if kind == "source":
                    await self.engine.remove_source(entity_id)
                elif kind == "sink":
                    await self.engine.remove_sink(entity_id)
                else:
                    await self.engine.remove_route(entity_id)
            except EngineError as error:
                if error.code == ErrorCode.BUSY:
                    raise ConflictError(f"{kind} {entity_id!r} is in use by listeners") from None
                raise self._engine_error(error) from None
            del registry[entity_id]
            self.devices.pop((kind, entity_id), None)
            self.xruns.pop((kind, entity_id), None)
            self.levels.pop((kind, entity_id), None)
            await self._persist()

    # ---- status ----------------------------------------------------------

    def listener_counts(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {"sinks": {s: 0 for s in self.sinks},
                                             "sources": {}, "routes": {}}
        total = 0
        for session in self.sessions.values():
            if not session.answered:
                continue
            kind, ident = session.target
            bucket = counts[kind + "s"]
            bucket[ident] = bucket.get(ident, 0) + 1
            total += 1
        return {"total": total, **counts}

    def status(self) -> dict[str, Any]:
        stats = self.engine.stats()
        devices = [{"kind": k, "id": i, **v} for (k, i), v in sorted(self.devices.items())]
        return {
            "name": self.config.name,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "listeners": self.listener_counts(),
            "max_listeners": self.config.server.max_listeners,
            "devices": devices,
            "xruns": {"total": sum(self.xruns.values()),
                      "sources": {i: n for (k, i), n in self.xruns.items() if k == "source"},
                      "sinks": {i: n for (k, i), n in self.xruns.items() if k == "sink"}},
            "engine": {"sources": stats.sources, "sinks": stats.sinks, "routes": stats.routes,
                       "listeners": stats.listeners, "threads": stats.threads,
                       "events_posted": stats.events_posted,
                       "events_coalesced": stats.events_coalesced,
                       "events_dropped": self.engine.dropped_events},
        }

    def census(self) -> dict[str, int]:
        """Everything a listener can leave behind; all zero when idle (tests)."""
        engine_listeners = self.engine.listeners()
        return {
            "sessions": len(self.sessions),
            "by_listener": len(self.by_listener),
            "engine_listeners": len(engine_listeners),
            "engine_stats_listeners": self.engine.stats().listeners,
            "temporary_sinks": sum(1 for s in self.engine.sinks() if s.startswith(TEMP_PREFIX)),
            "temporary_routes": sum(1 for r in self.engine.routes() if r.startswith(TEMP_PREFIX)),
        }

    # ---- rate limit ----------------------------------------------------------

    def check_post_rate(self, client: str) -> None:
        """A token bucket per client address for WHEP POSTs."""
        cfg = self.config.server
        now = time.monotonic()
        tokens, stamp = self._buckets.get(client, (float(cfg.post_burst), now))
        tokens = min(float(cfg.post_burst), tokens + (now - stamp) * cfg.post_rate_per_s)
        if tokens < 1.0:
            retry = max(1, math.ceil((1.0 - tokens) / cfg.post_rate_per_s))
            self._buckets[client] = (tokens, now)
            raise RateLimitedError("too many requests from this address",
                                   headers={"Retry-After": str(retry)})
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > 4096:  # forget clients whose buckets are full again
            full = [c for c, (t, s) in self._buckets.items()
                    if t + (now - s) * cfg.post_rate_per_s >= cfg.post_burst]
            for c in full:
                del self._buckets[c]

    # ---- sessions ------------------------------------------------------------

    def find_session(self, sink_id: str, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.sink_id != sink_id or not session.answered:
            raise NotFoundError("no such session")
        return session

    async def open_session(self, target: tuple[str, str], offer: str, client: str) -> tuple[Session, str]:
        """Start a listener for ``target`` (("sink"|"source"|"route", id)); returns
        the session and its answer once the engine answered."""
        if self.closing:
            raise CapacityError("the appliance is shutting down", headers={"Retry-After": "10"})
        kind, ident = target
        registry = {"sink": self.sinks, "source": self.sources, "route": self.routes}[kind]
        if ident not in registry:
            raise NotFoundError(f"no {kind} {ident!r}")
        if len(self.sessions) >= self.config.server.max_listeners:
            raise CapacityError("the listener limit is reached", headers={"Retry-After": "10"})
        mids, ufrag = _offer_facts(offer)
        if not mids:
            raise BadRequestError("the offer has no media section")
        sink_id = ident if kind == "sink" else f"{TEMP_PREFIX}{secrets.token_hex(6)}"
        session = Session(id=secrets.token_urlsafe(24), sink_id=sink_id, target=target,
                          client=client, mids=mids, remote_ufrag=ufrag)
        self.sessions[session.id] = session
        try:
            answer = await self._nursery.start(self._run_session, session, offer)
        except BaseException:
            # the task ended before it started: its cleanup has run
            self.sessions.pop(session.id, None)
            raise
        return session, answer

    async def _run_session(self, session: Session, offer: str, *,
                           task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with session.cancel_scope:
                if session.target[0] != "sink":
                    await self._make_temporary(session)
                try:
                    listener_id = self.engine.add_listener(session.sink_id, offer)
                except EngineError as error:
                    if error.code == ErrorCode.SDP:
                        raise BadRequestError(error.message) from None
                    raise self._engine_error(error) from None
                # no checkpoint between these two lines: no event can be missed
                session.listener_id = listener_id
                self.by_listener[listener_id] = session
                answer = await self._wait_answer(session)
                session.answered = True
                session.last_heartbeat = time.monotonic()
                task_status.started(answer)
                self._listeners_changed()
                try:
                    async with trio.open_nursery() as watchers:
                        watchers.start_soon(self._watch_events, session)
                        watchers.start_soon(self._watch_liveness, session)
                except* Exception as crash:  # never into the service nursery; Cancelled passes
                    session.end_reason = session.end_reason or "crashed"
                    log.error("listener session %s crashed", session.id[:8], exc_info=crash)
            if not session.answered:  # ended while it waited for the answer
                if session.end_reason == "shutdown":
                    raise CapacityError("the appliance is shutting down",
                                        headers={"Retry-After": "10"})
                raise ServiceError(f"the session ended before its answer: {session.end_reason}")
        finally:
            if session.end_reason is None:
                session.end_reason = "shutdown" if self.closing else "ended"
            with trio.CancelScope(shield=True) as shield:
                shield.deadline = trio.current_time() + CLEANUP_TIMEOUT_S
                await self._cleanup(session)
            if shield.cancelled_caught:
                log.error("cleanup of session %s timed out", session.id[:8])

    async def _make_temporary(self, session: Session) -> None:
        kind, ident = session.target
        if kind == "source":
            spec = RouteSpec(source_id=ident, sink_id=session.sink_id)
        else:
            route = self.routes[ident].spec
            spec = RouteSpec(route.source_id, session.sink_id, route.gain_db, route.muted,
                             route.source_channel)
        cfg = self.config.server
        try:
            await self.engine.add_sink(session.sink_id, SinkSpec(
                kind="opus", frame_ms=cfg.listen_frame_ms, bitrate=cfg.listen_bitrate))
            session.temp_sink = session.sink_id
            await self.engine.add_route(session.sink_id, spec)
            session.temp_route = session.sink_id
        except EngineError as error:
            raise self._engine_error(error) from None

    async def _wait_answer(self, session: Session) -> str:
        timeout = self.config.server.answer_timeout_s
        with trio.move_on_after(timeout):
            async for event in session._receive:
                if isinstance(event, AnswerReady):
                    return event.sdp
                if isinstance(event, AnswerFailed):
                    session.end_reason = "answer failed"
                    if event.code == ErrorCode.SDP:
                        raise BadRequestError(event.reason or "the offer was refused")
                    raise ServiceError(f"the engine could not answer: {event.reason}")
                self._session_event(session, event)
        session.end_reason = "answer timeout"
        raise AnswerTimeoutError(f"no answer within {timeout:g} s")

    def _session_event(self, session: Session, event: Any) -> None:
        if isinstance(event, CandidateGathered):
            session.candidates.append({"candidate": event.candidate,
                                       "sdpMid": session.mid_for(event.mline_index),
                                       "sdpMLineIndex": event.mline_index})
        elif isinstance(event, ListenerStateChanged):
            session.state = event.state
            if event.state.is_final:
                session.end(f"ice {event.state.value}")
        elif isinstance(event, (AnswerReady, AnswerFailed)):
            pass  # late duplicates
        else:
            raise TypeError(f"unexpected event for a listener: {event!r}")

    async def _watch_events(self, session: Session) -> None:
        async for event in session._receive:
            self._session_event(session, event)

    async def _watch_liveness(self, session: Session) -> None:
        """End the session after ``session_timeout_s`` with neither a heartbeat
        nor any packet from the peer (ICE consent checks, RTCP)."""
        timeout = self.config.server.session_timeout_s
        interval = min(1.0, timeout / 5)
        while True:
            await trio.sleep(interval)
            try:
                stats = self.engine.listener_stats(session.listener_id)
            except EngineError:
                session.end("engine lost the listener")
                return
            session.state = stats.state
            if stats.state.is_final:
                session.end(f"ice {stats.state.value}")
                return
            now = time.monotonic()
            rx_age = stats.last_rx_age_s if stats.last_rx_age_s is not None \
                else now - session.created
            if min(rx_age, now - session.last_heartbeat) > timeout:
                log.info("session %s expired: last packet %.1f s ago, last heartbeat %.1f s ago",
                         session.id[:8], rx_age, now - session.last_heartbeat)
                session.end("expired")
                return

    async def _cleanup(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        if session.listener_id is not None:
            self.by_listener.pop(session.listener_id, None)
        session._send.close()
        session.candidates.clear()
        steps = []
        if session.listener_id is not None:
            steps.append(("listener", self.engine.remove_listener, session.listener_id))
        if session.temp_route is not None:
            steps.append(("route", self.engine.remove_route, session.temp_route))
        if session.temp_sink is not None:
            steps.append(("sink", self.engine.remove_sink, session.temp_sink))
        for what, remove, key in steps:
            try:
                await remove(key)
            except EngineError as error:
                if error.code != ErrorCode.NOT_FOUND:
                    log.error("session %s: removing its %s failed: %s",
                              session.id[:8], what, error)
            except Exception:  # the next steps must still run
                log.exception("session %s: removing its %s failed", session.id[:8], what)
        log.info("session %s on %s ended: %s", session.id[:8], session.sink_id, session.end_reason)
        session.done.set()
        if session.answered:
            self._listeners_changed()

    async def close_session(self, session: Session, reason: str = "deleted") -> None:
        """End a session and wait until it is cleaned up."""
        session.end(reason)
        with trio.move_on_after(CLEANUP_TIMEOUT_S + 1):
            await session.done.wait()

    def heartbeat(self, session: Session) -> None:
        session.last_heartbeat = time.monotonic()

    def add_candidates(self, session: Session, candidates: Iterable[tuple[int, str]]) -> None:
        for mline, candidate in candidates:
            try:
                self.engine.add_listener_candidate(session.listener_id, mline, candidate)
            except EngineError as error:
                if error.code == ErrorCode.NOT_FOUND:
                    raise NotFoundError("no such session") from None
                raise BadRequestError(f"candidate refused: {error.message}") from None

    def mline_for(self, session: Session, mid: str | None, index: int | None) -> int:
        if mid is not None:
            if mid not in session.mids:
                raise BadRequestError(f"no m-line with mid {mid!r}")
            return session.mids.index(mid)
        if index is not None:
            if not 0 <= index < len(session.mids):
                raise BadRequestError(f"no m-line {index}")
            return index
        return 0

    def take_candidates(self, session: Session) -> list[dict[str, Any]]:
        out, session.candidates = session.candidates, []
        return out

    # ---- events --------------------------------------------------------------

    async def _dispatch(self) -> None:
        async for event in self.engine.events:
            try:
                self._dispatch_one(event)
            except Exception:
                log.exception("dispatching %r failed", event)

    def _dispatch_one(self, event: Event) -> None:
        if isinstance(event, (AnswerReady, AnswerFailed, CandidateGathered, ListenerStateChanged)):
            session = self.by_listener.get(event.listener_id)
            if session is None:
                self.events_ignored += 1  # a late event for a listener that is gone
                return
            try:
                session._send.send_nowait(event)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self.events_ignored += 1
            return
        if isinstance(event, LevelsMeasured):
            if event.entity_id.startswith(TEMP_PREFIX):
                return
            value = {"peak_dbfs": [_finite(v) for v in event.peak_dbfs],
                     "rms_dbfs": [_finite(v) for v in event.rms_dbfs]}
            self.levels[(event.kind, event.entity_id)] = value
            for sub in self.subscribers:
                sub.push_levels(event.kind, event.entity_id, value)
            return
        if isinstance(event, DeviceLost):
            state = {"state": "lost", "reason": event.reason}
        elif isinstance(event, DeviceRestored):
            state = {"state": "ok"}
        elif isinstance(event, XrunOccurred):
            self.xruns[(event.kind, event.entity_id)] = event.total
            self._broadcast("xrun", {"kind": event.kind, "id": event.entity_id,
                                     "total": event.total})
            return
        else:
            return
        self.devices[(event.kind, event.entity_id)] = state
        self._broadcast("device", {"kind": event.kind, "id": event.entity_id, **state})

    def _broadcast(self, name: str, data: Any) -> None:
        for sub in self.subscribers:
            sub.push(name, data)

    def _listeners_changed(self) -> None:
        if self.subscribers:
            self._broadcast("listeners", self.listener_counts())

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscriber]:
        """A live-event stream, starting with the current listener counts and
        device states."""
        sub = Subscriber()
        sub.push("listeners", self.listener_counts())
        for (kind, ident), state in sorted(self.devices.items()):
            sub.push("device", {"kind": kind, "id": ident, **state})
        for (kind, ident), value in self.levels.items():
            sub.push_levels(kind, ident, value)
        if self.closing:
            sub.close()
        self.subscribers.add(sub)
        try:
            yield sub
        finally:
            self.subscribers.discard(sub)

    # ---- shutdown --------------------------------------------------------------

    def begin_close(self) -> None:
        """Refuse new listeners and end live-event streams (the server is
        stopping); sessions end in ``aclose``."""
        self.closing = True
        for sub in list(self.subscribers):
            sub.close()

    async def aclose(self) -> None:
        """End every session and wait (bounded) for their cleanup."""
        self.begin_close()
        sessions = list(self.sessions.values())
        for session in sessions:
            session.end("shutdown")
        with trio.move_on_after(self.config.server.shutdown_timeout_s):
            for session in sessions:
                await session.done.wait()


@asynccontextmanager
async def open_service(config: Config, *, store: Store | None = None) -> AsyncIterator[Service]:
    """Engine, service nursery and dispatcher for the duration of the block;
    the graph comes from the store (or the config's seed)."""
    if store is None:
        store = Store(config.state_dir)
        await trio.to_thread.run_sync(store.load)
    graph = store.graph_for(config)
    async with open_engine(config.engine) as engine:
        async with trio.open_nursery() as nursery:
            service = Service(config, engine, nursery, store)
            nursery.start_soon(service._dispatch)
            try:
                await service._load_graph(graph)
                yield service
            finally:
                with trio.CancelScope(shield=True):
                    await service.aclose()
                nursery.cancel_scope.cancel()
