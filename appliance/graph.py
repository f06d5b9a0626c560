"""The audio graph with names: one registry per kind (sources, sinks,
routes), creating, changing and deleting entities in the engine, persisting
every change, and remembering what could not start this time (a device
missing at boot is kept, not forgotten).

Every value comes through ``appliance.model`` (the same checks as the config
file and the saved state); ALSA devices must be ones the appliance
enumerated and file sources files inside the media folder, both checked here
for the API and for a saved graph alike.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
from typing import Any, Callable

import trio

from . import devices, media
from .config import Config
from .engine import Engine, EngineError
from .errors import ExistsError, InUseError, InvalidError, NotFoundError, NotSavedError
from .model import KINDS, NETWORK_KINDS, Graph, entity_from_dict, entity_to_dict
from .sessions import Sessions
from .store import Store, StoreError

__all__ = ["GraphRegistry", "CHANGEABLE", "NETWORK_FIELDS"]

log = logging.getLogger(__name__)

# A network source's fields that change by making it again in the engine
# (its socket, group, allow list, format), its routes with it.
NETWORK_FIELDS = frozenset({"address", "port", "interface", "allow_from", "latency_ms", "program",
                            "encoding", "payload_type", "clock_rate", "stream_channels",
                            "refclk"})
# What may change on a live entity, by kind.
CHANGEABLE = {"source": frozenset({"name", "tone_hz", "tone_dbfs", "public", "publish_token"})
              | NETWORK_FIELDS,
              "sink": frozenset({"name", "language", "description", "delay_ms",
                                 "relays_first"}),
              "route": frozenset({"name", "gain_db", "muted"})}


class GraphRegistry:
    """The named graph of one service. ``entity_extras(kind, id)`` adds live
    state (device, xruns, listeners) to what ``get``/``list`` return;
    ``deleted(kind, id)`` is told when an entity is gone."""

    def __init__(self, config: Config, engine: Engine, store: Store, sessions: Sessions,
                 entity_extras: Callable[[str, str], dict[str, Any]] = lambda k, i: {},
                 deleted: Callable[[str, str], None] = lambda k, i: None):
        self.config = config
        self.engine = engine
        self.store = store
        self.sessions = sessions
        self._extras = entity_extras
        self._deleted = deleted
        self.registries: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        self.left_out: list[tuple[str, Any]] = []
        self._lock = trio.Lock()

    def registry(self, kind: str) -> dict[str, Any]:
        return self.registries[kind]

    def require(self, kind: str, entity_id: str) -> Any:
        try:
            return self.registries[kind][entity_id]
        except KeyError:
            raise NotFoundError(f"no {kind} {entity_id!r}") from None

    # ---- checks the engine cannot make ---------------------------------------------

    def _check_resources(self, kind: str, entity: Any) -> Any:
        """Devices from the enumerated list, files inside the media folder;
        returns the entity with its file path resolved for the engine."""
        spec = entity.spec
        if kind in ("source", "sink") and spec.kind == "alsa":
            devices.check_device(spec.device, "capture" if kind == "source" else "playback")
        if kind == "source" and spec.kind == "file":
            if spec.path is None:
                raise InvalidError("a file source needs path (a file in the media folder)")
            media.resolve_media(self.config.media_folder, spec.path)
        return entity

    def _engine_spec(self, kind: str, spec: Any) -> Any:
        if kind == "source" and spec.kind == "file":
            path = media.resolve_media(self.config.media_folder, spec.path)
            return dataclasses.replace(spec, path=str(path))
        return spec

    async def _add_to_engine(self, kind: str, entity: Any) -> None:
        add = {"source": self.engine.add_source, "sink": self.engine.add_sink,
               "route": self.engine.add_route}[kind]
        await add(entity.id, self._engine_spec(kind, entity.spec))

    # ---- start -------------------------------------------------------------------

    async def load(self, graph: Graph) -> None:
        """Start the graph. An entity refused (a device that is gone, a file
        that moved, one not allowed) is logged and left out, with the routes
        that need it, so the appliance still comes up."""
        for kind in KINDS:
            for entity in graph.of(kind):
                if kind == "route" and (entity.spec.source_id not in self.registries["source"]
                                        or entity.spec.sink_id not in self.registries["sink"]):
                    log.error("route %s left out: its source or sink is missing", entity.id)
                    self.left_out.append((kind, entity))
                    continue
                try:
                    self._check_resources(kind, entity)
                    await self._add_to_engine(kind, entity)
                except (EngineError, InvalidError) as error:
                    log.error("%s %s left out: %s", kind, entity.id, error)
                    self.left_out.append((kind, entity))
                    continue
                self.registries[kind][entity.id] = entity

    # ---- reading -------------------------------------------------------------------

    def graph(self) -> Graph:
        """The graph to persist: what runs, plus what could not start this
        time."""
        def both(kind: str) -> tuple[Any, ...]:
            registry = self.registries[kind]
            return tuple(registry.values()) + tuple(
                e for k, e in self.left_out if k == kind and e.id not in registry)
        return Graph(both("source"), both("sink"), both("route"))

    def describe(self, kind: str, entity: Any) -> dict[str, Any]:
        return {**entity_to_dict(entity), **self._extras(kind, entity.id)}

    def list(self, kind: str) -> list[dict[str, Any]]:
        return [self.describe(kind, e) for e in self.registries[kind].values()]

    def get(self, kind: str, entity_id: str) -> dict[str, Any]:
        return self.describe(kind, self.require(kind, entity_id))

    # ---- changing ------------------------------------------------------------------

    async def _persist(self) -> None:
        """Callers shield the engine change and this together: a client that
        leaves mid-request (Quart cancels its handler) must not leave a change
        live but unsaved, or the engine and the registry apart."""
        try:
            await self.store.save_graph(self.config, self.graph())
        except StoreError as error:
            log.error("%s", error)
            raise NotSavedError(f"the change is live but was not saved: {error}") from None

    def _forget_left_out(self, kind: str, entity_id: str) -> bool:
        before = len(self.left_out)
        self.left_out = [(k, e) for k, e in self.left_out if (k, e.id) != (kind, entity_id)]
        return len(self.left_out) != before

    async def create(self, kind: str, body: Any) -> dict[str, Any]:
        if kind == "source" and isinstance(body, dict) and body.get("kind") == "whip" \
                and not body.get("publish_token"):
            body = {**body, "publish_token": secrets.token_urlsafe(24)}   # 32 characters
        entity = entity_from_dict(kind, body, kind)
        registry = self.registries[kind]
        async with self._lock:
            if entity.id in registry:
                raise ExistsError(f"{kind} {entity.id!r} exists already")
            if kind == "route":   # the body names them: a bad body, not a missing resource
                for end in ("source", "sink"):
                    if getattr(entity.spec, f"{end}_id") not in self.registries[end]:
                        raise InvalidError(f"no {end} {getattr(entity.spec, f'{end}_id')!r}")
            self._check_resources(kind, entity)
            with trio.CancelScope(shield=True):   # see _persist
                await self._add_to_engine(kind, entity)
                registry[entity.id] = entity
                self._forget_left_out(kind, entity.id)
                await self._persist()
        return self.get(kind, entity.id)

    async def update(self, kind: str, entity_id: str, body: Any) -> dict[str, Any]:
        """Change a name, a route's gain_db/muted, a source's ``public``, a
        tone source's tone_hz/tone_dbfs, a whip source's publish_token, a
        network source's ``NETWORK_FIELDS`` (``_remake_source``), or a
        sink's language, description, relays_first and alignment delay_ms. Other fields
        cannot change on a live entity."""
        if not isinstance(body, dict):
            raise InvalidError("the body must be a JSON object")
        allowed = CHANGEABLE[kind]
        for key in body:
            if key not in allowed:
                raise InvalidError(f"{kind} field {key!r} cannot be changed "
                                   f"(changeable: {', '.join(sorted(allowed))})")
        async with self._lock:
            entity = self.require(kind, entity_id)
            changed = entity_from_dict(kind, {**entity_to_dict(entity), **body}, kind)
            changes = {k: v for k, v in body.items() if k != "name"}
            if kind == "route" and changes:
                self._update_route(entity_id, changed.spec)
            elif kind == "source" and set(changes) & NETWORK_FIELDS:
                if changed.spec.kind not in NETWORK_KINDS or \
                        set(changes) & {"tone_hz", "tone_dbfs"}:
                    raise InvalidError(f"only network sources have "
                                       f"{', '.join(sorted(set(changes) & NETWORK_FIELDS))}")
                await self._remake_source(entity, changed)
            elif kind == "source" and set(changes) - {"public", "publish_token"}:
                if changed.spec.kind not in ("tone", "clicks"):
                    raise InvalidError("only tone sources have tone_hz/tone_dbfs")
                self.engine.set_tone(entity_id, changed.spec.tone_hz, changed.spec.tone_dbfs)
            elif kind == "sink" and "delay_ms" in changes:
                # its variants hear it too: they derive from its delayed mix
                self.engine.set_sink_delay(entity_id, changed.spec.delay_ms)
            self.registries[kind][entity_id] = changed
            with trio.CancelScope(shield=True):   # see _persist
                await self._persist()
        return self.get(kind, entity_id)

    async def _remake_source(self, before: Any, after: Any) -> None:
        """A network source made again in the engine with its new fields,
        its routes taken off and put back (their channels hear a moment's
        silence; a whip source's publisher ends: its feed was the old
        source's). Refused while a listener hears the source, or one of its
        routes, on its own: their temporary routes hold it. If the engine
        refuses the new fields, the source is made again as it was."""
        source_id = before.id
        routes = [r for r in self.registries["route"].values() if r.spec.source_id == source_id]
        held = self._listening("source", source_id) + sum(
            self._listening("route", r.id) for r in routes)
        if held:
            raise InUseError(f"source {source_id!r} is heard on its own by {held} listener(s): "
                             "they must leave before its network settings change")
        with trio.CancelScope(shield=True):   # never half made again
            for route in routes:
                await self.engine.remove_route(route.id)
            await self.engine.remove_source(source_id)
            self._deleted("source", source_id)
            try:
                await self._add_to_engine("source", after)
            except EngineError:
                await self._add_to_engine("source", before)
                raise
            finally:
                for route in routes:
                    await self._add_to_engine("route", route)

    def _listening(self, kind: str, entity_id: str) -> int:
        """How many listeners hear this entity itself."""
        return sum(1 for s in self.sessions.answered() if s.target == (kind, entity_id))

    def plan(self, target: Graph) -> dict[str, dict[str, list[str]]]:
        """What replacing the graph with ``target`` changes, by kind: the ids
        added, removed, changed in place (only changeable fields differ) and
        made again (another field differs: removed and added). Refuses what
        may not be made here (a device or a media file) as create would."""
        def in_place(kind: str, now: Any, wanted: Any) -> bool:
            a, b = entity_to_dict(now), entity_to_dict(wanted)
            return {k for k in a if a[k] != b[k]} <= CHANGEABLE[kind]

        out = {}
        for kind in KINDS:
            now = self.registries[kind]
            wanted = {e.id: e for e in target.of(kind)}
            changed = [i for i in wanted if i in now and wanted[i] != now[i]]
            live = {i for i in changed if in_place(kind, now[i], wanted[i])}
            out[kind] = {"added": sorted(set(wanted) - set(now)),
                         "removed": sorted(set(now) - set(wanted)),
                         "changed": sorted(live),
                         "made_again": sorted(set(changed) - live)}
            # devices and media files checked before anything goes
            for i in out[kind]["added"] + out[kind]["made_again"]:
                self._check_resources(kind, wanted[i])
        return out

    async def replace_all(self, target: Graph) -> dict[str, dict[str, list[str]]]:
        """Make the graph ``target`` (a restore), through the same create,
        update and delete as the admin API. Refused before anything changes
        when a listener hears what would be removed or made again."""
        plan = self.plan(target)
        going = [(kind, i) for kind in KINDS
                 for i in plan[kind]["removed"] + plan[kind]["made_again"]]
        for kind, i in going:
            listening = self._listening(kind, i)
            if listening:
                raise InUseError(f"{kind} {i!r} has {listening} listener(s): the restore would "
                                 "remove it; nothing was changed")
        wanted = {kind: {e.id: e for e in target.of(kind)} for kind in KINDS}
        going_set = set(going)
        # routes first (they hold sources and sinks), and any route of a
        # source or sink that goes
        for route in list(self.registries["route"].values()):
            if ("route", route.id) in going_set or ("source", route.spec.source_id) in going_set \
                    or ("sink", route.spec.sink_id) in going_set:
                await self.delete("route", route.id)
        for kind in ("sink", "source"):
            for i in plan[kind]["removed"] + plan[kind]["made_again"]:
                await self.delete(kind, i)
        for kind in ("source", "sink", "route"):
            for i, entity in wanted[kind].items():
                if i not in self.registries[kind]:
                    await self.create(kind, entity_to_dict(entity))
                elif i in plan[kind]["changed"]:
                    now = entity_to_dict(self.registries[kind][i])
                    body = {k: v for k, v in entity_to_dict(entity).items()
                            if k != "id" and now.get(k) != v}
                    await self.update(kind, i, body)
        return plan

    def _update_route(self, route_id: str, spec: Any) -> None:
        self.engine.update_route(route_id, gain_db=spec.gain_db, muted=spec.muted)
        for session in self.sessions:   # listeners to this route hear the change too
            if session.target == ("route", route_id) and session.temp_route:
                try:
                    self.engine.update_route(session.temp_route, gain_db=spec.gain_db,
                                             muted=spec.muted)
                except EngineError:
                    pass  # the session is ending

    async def delete(self, kind: str, entity_id: str) -> None:
        registry = self.registries[kind]
        async with self._lock:
            if entity_id not in registry:
                if self._forget_left_out(kind, entity_id):
                    await self._persist()
                    return
                raise NotFoundError(f"no {kind} {entity_id!r}")
            listening = self._listening(kind, entity_id)
            if listening:
                raise InUseError(f"{kind} {entity_id!r} has {listening} listener(s)")
            users = [r.id for r in self.registries["route"].values()
                     if kind != "route" and getattr(r.spec, f"{kind}_id") == entity_id]
            if users:
                raise InUseError(f"{kind} {entity_id!r} is used by route(s) {', '.join(users)}")
            remove = {"source": self.engine.remove_source, "sink": self.engine.remove_sink,
                      "route": self.engine.remove_route}[kind]
            with trio.CancelScope(shield=True):   # see _persist
                await remove(entity_id)
                del registry[entity_id]
                self._deleted(kind, entity_id)
                await self._persist()
