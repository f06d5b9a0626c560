"""The service: the wiring between the web app and the engine.

    open_service(config)
      open_engine(...)                 the engine lives longest
        service nursery
          feed.run                     engine events -> live state, SSE subscribers
          sessions                     one task per listener (appliance.sessions)
          publishers                   one task per WHIP publisher (appliance.publishing)
          publications                 one task per channel published out (appliance.publications)
          relays                       one task per Janus relay (appliance.relays)
          clock.jumps                  says in the log when the wall clock jumps (appliance.clock)
          venue.run                    the other boxes on the LAN, for /venue (appliance.venue)
          updater                      an uploaded bundle installed by RAUC (appliance.update)
        graph                          named sources, sinks, routes (appliance.graph)

Where each concern lives: a listener's life in ``sessions``, the graph and
its persistence in ``graph`` and ``store``, the live state in ``feed``, SDP in
``sdp``, values and their checks in ``model``. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncContextManager, AsyncIterable, AsyncIterator, Callable

import trio

from . import __version__, devices, logs, media, metrics
from .config import Config
from .engine import Engine, EngineError, open_engine
from .errors import (
    ExistsError, InvalidError, ManagedElsewhereError, NotFoundError, UnauthorizedError,
)
from .feed import Feed, Subscriber
from .graph import GraphRegistry
from .hat_controls import HatControls
from .backup import SECTIONS, Backup, make_backup, read_backup
from .board import Board
from .clock import WallClock
from .venue import Venue
from .model import (
    NETWORK_KINDS, PublicationSpec, RelaySpec, RouteSpec, SourceSpec, Variant, build, check_id,
)
from .publications import Publications
from .relays import Relays
from .publishing import Publisher, Publishers, check_publish_token
from .sap import SapListener
from .sdp import Offer, describe_stream
from .sessions import DerivedSink, Session, Sessions
from .store import Store
from .tls import host_label
from .update import Updater

__all__ = ["open_service", "Service"]

log = logging.getLogger(__name__)

# what a listener is shown of a channel
CHANNEL_FIELDS = ("id", "name", "kind", "listeners", "language", "description", "relays_first")

PUBLICATIONS = "publications"   # the store section
RELAYS = "relays"               # the store section


class Service:
    """Create it with ``open_service``."""

    def __init__(self, config: Config, engine: Engine, nursery: trio.Nursery, store: Store):
        self.config = config
        self.engine = engine
        self.store = store
        self.started_at = time.monotonic()
        self.feed = Feed(engine, shown=lambda kind, ident: not DerivedSink.is_derived(ident),
                         listener_counts=self.listener_counts,
                         max_streams=config.server.max_event_streams,
                         max_streams_per_client=config.server.max_event_streams_per_client)
        self.sessions = Sessions(config, engine, nursery, changed=self.feed.listeners_changed)
        self.publishers = Publishers(config, engine, nursery)
        self.publications = Publications(engine, nursery)
        self.relays = Relays(engine, nursery, config.name)
        self.sap = SapListener(config.server.sap_port, interface=config.server.sap_interface)
        self.board = Board(config.board_root, config.state_dir)
        self.hat = HatControls(store)
        self.clock = WallClock(lambda: self.board.read().clock_synchronized)
        self.venue = Venue()
        self.updater = Updater(config.update, config.state_dir, nursery)
        self.graph = GraphRegistry(config, engine, store, self.sessions,
                                   entity_extras=self._entity_extras, deleted=self._deleted)

    @property
    def closing(self) -> bool:
        return self.sessions.closing

    def _deleted(self, kind: str, entity_id: str) -> None:
        self.feed.forget(kind, entity_id)
        if kind == "source":
            self.publishers.end_for(entity_id, "source deleted or made again")

    def _entity_extras(self, kind: str, entity_id: str) -> dict[str, Any]:
        if kind == "route":
            return {}
        out = self.feed.entity_state(kind, entity_id)
        if kind == "sink":
            out["listeners"] = self.listener_counts()["sinks"].get(entity_id, 0)
        spec = self.engine.sources().get(entity_id) if kind == "source" else None
        if spec is not None and spec.kind in NETWORK_KINDS:
            out["network"] = self._network_source(entity_id, spec)
        return out

    def _network_source(self, source_id: str, spec: SourceSpec) -> dict[str, Any]:
        """What a network source took in and refused, and its buffer."""
        out = dataclasses.asdict(self.engine.net_source_stats(source_id))
        if spec.kind == "whip":
            publisher = self.publishers.by_source.get(source_id)
            out["publisher"] = publisher.status() if publisher is not None else None
            if publisher is not None:
                out["sender"] = publisher.client
        if spec.refclk.startswith("ptp="):
            # the sender follows a PTP clock; this box does not (PTP is not a
            # dependency), but says whether linuxptp runs here
            out["ptp"] = {"clock": spec.refclk[4:], "linuxptp_running": ptp4l_running()}
        return out

    def backup(self, password_hash: str | None = None) -> dict[str, Any]:
        """The settings as one file (``appliance.backup``)."""
        saved = {name: self.store.section(name) for name in SECTIONS}
        sections = {name: value for name, value in saved.items() if value is not None}
        return make_backup(self.config.name, self.graph.graph(), sections, password_hash)

    def restore_plan(self, backup: Backup) -> dict[str, Any]:
        """What restoring ``backup`` would change (nothing is changed)."""
        return self.graph.plan(backup.graph)

    async def restore(self, backup: Backup) -> dict[str, Any]:
        """Make ``backup`` the state: the graph through the admin API's own
        changes, the sections saved (their owners apply them at the next
        start). Returns what changed."""
        plan = await self.graph.replace_all(backup.graph)
        for name, value in backup.sections.items():
            await self.store.save_section(name, value)
        return plan

    def check_publisher(self, source_id: str, token: str | None) -> None:
        """``NotFoundError`` unless ``source_id`` is a whip source,
        ``UnauthorizedError`` unless ``token`` is its publish token."""
        entity = self.graph.registry("source").get(source_id)
        if entity is None or entity.spec.kind != "whip":
            raise NotFoundError(f"no whip source {source_id!r}")
        if not check_publish_token(entity.spec.publish_token, token):
            raise UnauthorizedError(f"publishing into {source_id!r} needs its publish token "
                                    "as a bearer", realm="publish")

    async def open_publisher(self, source_id: str, token: str | None, offer: Offer,
                             client: str) -> tuple[Publisher, str]:
        """A WHIP publisher into the whip source ``source_id``, if ``token``
        is its publish token (checked again: the offer came meanwhile); it
        replaces whoever published there."""
        self.check_publisher(source_id, token)
        return await self.publishers.open(source_id, offer, client)

    # ---- publications (WHIP out) ---------------------------------------------------

    def _publication_specs(self) -> dict[str, dict[str, Any]]:
        return dict(self.store.section(PUBLICATIONS, {}) or {})

    def start_publications(self) -> None:
        """The config's publications and the saved ones, started."""
        self._start_outbound("publication", self.publications, self.config.publications,
                             self._publication_specs(), PublicationSpec)

    def _start_outbound(self, kind: str, running: Publications | Relays,
                        configured: tuple[Any, ...], saved: dict[str, dict[str, Any]],
                        spec_cls: type) -> None:
        """Start the config's ``[[publications]]`` or ``[[relays]]`` (fixed),
        then the saved ones the admin API made; a saved one that is broken,
        or whose id the config now uses, is logged and left out."""
        for entry in configured:
            running.start(entry.id, entry.spec, in_config=True)
        for ident, fields in saved.items():
            if ident in running.by_id:
                log.error("saved %s %s left out: the config file has one of that id", kind, ident)
                continue
            try:
                running.start(ident, build(spec_cls, fields, f"{kind} {ident}"))
            except InvalidError as error:
                log.error("%s %s left out: %s", kind, ident, error)

    @staticmethod
    def _removable(kind: str, running: Publications | Relays, ident: str) -> None:
        """``NotFoundError`` unless it runs; the config file's own are
        removed from the config file, not through the API."""
        item = running.by_id.get(ident)
        if item is None:
            raise NotFoundError(f"no {kind} {ident!r}")
        if item.in_config:
            raise ManagedElsewhereError(f"{kind} {ident!r} is set in the config file: "
                                        "remove it there")

    async def add_publication(self, body: dict[str, Any]) -> dict[str, Any]:
        """Publish a channel to a WHIP server: ``{"id", "sink_id", "url",
        "token", "tls_ca"}``, checked, saved, started."""
        fields = dict(body)
        publication_id = check_id("publication", fields.pop("id", None), "id")
        spec = build(PublicationSpec, fields, "")
        sink = self.graph.require("sink", spec.sink_id)
        if sink.spec.kind != "opus":
            raise InvalidError(f"sink_id: {spec.sink_id!r} is not a channel (an Opus sink)")
        if publication_id in self.publications.by_id:
            raise ExistsError(f"publication {publication_id!r} exists already")
        saved = self._publication_specs()
        saved[publication_id] = dataclasses.asdict(spec)
        await self.store.save_section(PUBLICATIONS, saved)
        return self.publications.start(publication_id, spec).status()

    def publication_status(self) -> list[dict[str, Any]]:
        return self.publications.status()

    async def remove_publication(self, publication_id: str) -> None:
        self._removable("publication", self.publications, publication_id)
        await self.publications.stop(publication_id)
        saved = self._publication_specs()
        saved.pop(publication_id, None)
        await self.store.save_section(PUBLICATIONS, saved)

    # ---- relays (Janus) -------------------------------------------------------------

    def _relay_specs(self) -> dict[str, dict[str, Any]]:
        return dict(self.store.section(RELAYS, {}) or {})

    def start_relays(self) -> None:
        """The config's relays and the saved ones, started."""
        self._start_outbound("relay", self.relays, self.config.relays, self._relay_specs(),
                             RelaySpec)

    async def add_relay(self, body: dict[str, Any]) -> dict[str, Any]:
        """Carry channels on a Janus server: ``{"id", "url", "channels",
        "api_secret", "admin_key", "tls_ca", "srtp"}``, checked, saved, started."""
        fields = dict(body)
        relay_id = check_id("relay", fields.pop("id", None), "id")
        spec = build(RelaySpec, fields, "")
        for sink_id in spec.channels:
            if self.graph.require("sink", sink_id).spec.kind != "opus":
                raise InvalidError(f"channels: {sink_id!r} is not a channel (an Opus sink)")
        if relay_id in self.relays.by_id:
            raise ExistsError(f"relay {relay_id!r} exists already")
        saved = self._relay_specs()
        saved[relay_id] = dataclasses.asdict(spec)
        await self.store.save_section(RELAYS, saved)
        return self.relays.start(relay_id, spec).status()

    def relay_status(self) -> list[dict[str, Any]]:
        return self.relays.status()

    async def remove_relay(self, relay_id: str) -> None:
        self._removable("relay", self.relays, relay_id)
        await self.relays.stop(relay_id)
        saved = self._relay_specs()
        saved.pop(relay_id, None)
        await self.store.save_section(RELAYS, saved)

    # ---- the graph, as the admin API changes it -------------------------------------

    def entities(self, kind: str) -> list[dict[str, Any]]:
        return self.graph.list(kind)

    def entity(self, kind: str, entity_id: str) -> dict[str, Any]:
        return self.graph.get(kind, entity_id)

    async def create_entity(self, kind: str, body: Any) -> dict[str, Any]:
        """A source (its fields, or an RTP stream's ``"sdp"``), sink or route."""
        return await self.graph.create(kind, _described(body) if kind == "source" else body)

    async def update_entity(self, kind: str, entity_id: str, body: Any) -> dict[str, Any]:
        if kind == "source" and isinstance(body, dict) and "sdp" in body:
            # a new SDP for an RTP source: its stream's fields, not its kind or name
            body = {k: v for k, v in _described(body).items()
                    if k not in ("kind", "name") or k in body}
        return await self.graph.update(kind, entity_id, body)

    async def delete_entity(self, kind: str, entity_id: str) -> None:
        await self.graph.delete(kind, entity_id)

    # ---- channels, as listeners see them --------------------------------------------

    def channels(self) -> list[dict[str, Any]]:
        """The channels a listener may see (Opus sinks that are not the
        appliance's own), in the graph's order."""
        return [{k: sink.get(k) for k in CHANNEL_FIELDS} for sink in self.graph.list("sink")
                if sink.get("kind") == "opus" and not DerivedSink.is_derived(str(sink.get("id")))]

    def channel_source_state(self, sink_id: str) -> str:
        """"ok"; "lost" when every route into the channel comes from a source
        whose device is lost; "none" when nothing is routed to it."""
        routes = [r for r in self.graph.registry("route").values() if r.spec.sink_id == sink_id]
        if not routes:
            return "none"
        lost = all(self.feed.devices.get(("source", r.spec.source_id), {}).get("state") == "lost"
                   for r in routes)
        return "lost" if lost else "ok"

    def channel_latency_ms(self, sink_id: str) -> float | None:
        """The engine's capture-to-send latency (median of the packets sent
        lately) of the channel, or of one of its hearing variants when only
        those have listeners; None when nothing was sent."""
        best = None
        for ident in [sink_id, *self.sessions.variants_of(sink_id)]:
            try:
                stats = self.engine.sink_stats(ident)
            except EngineError:
                continue   # removed meanwhile
            if stats.send_latency_samples and (
                    best is None or stats.send_latency_samples > best.send_latency_samples):
                best = stats
        return round(best.send_latency_p50_ms, 2) if best else None

    # ---- live events (SSE) ---------------------------------------------------------

    def check_event_room(self, client: str) -> None:
        """``RateLimitedError`` or ``FullError`` before a stream starts."""
        self.feed.check_room(client)

    def subscribe_events(self, client: str) -> AsyncContextManager[Subscriber]:
        return self.feed.subscribe(client)

    # ---- listeners and publishers ---------------------------------------------------

    def check_post_rate(self, client: str) -> None:
        """``RateLimitedError`` when ``client`` offers too often (WHEP and WHIP)."""
        self.sessions.check_post_rate(client)

    def find_session(self, sink_id: str, session_id: str) -> Session:
        return self.sessions.find(sink_id, session_id)

    async def end_session(self, sink_id: str, session_id: str) -> None:
        await self.sessions.delete(sink_id, session_id)

    def find_publisher(self, source_id: str, publisher_id: str) -> Publisher:
        return self.publishers.find(source_id, publisher_id)

    async def end_publisher(self, publisher: Publisher) -> None:
        await self.publishers.close(publisher, "deleted")

    # ---- the box: clock, venue, devices, media, logs, metrics ------------------------

    def set_clock(self, body: Any) -> dict[str, Any]:
        """The wall clock set by hand (``appliance.clock``)."""
        return self.clock.set(body)

    async def install_update(self, chunks: AsyncIterable[bytes], *, length: int | None,
                             reboot: bool) -> dict[str, Any]:
        """An update bundle streamed in, installed by RAUC, then (``reboot``)
        the trial boot asked for; appliance.update."""
        return await self.updater.install(chunks, length=length, reboot=reboot)

    def update_status(self) -> dict[str, Any]:
        return self.updater.status()

    @property
    def venue_id(self) -> str:
        return self.venue.id

    def venue_boxes(self) -> list[dict[str, Any]]:
        """The other boxes on the LAN and their channels (``appliance.venue``)."""
        return [box.as_dict() for box in self.venue.boxes()]

    async def alsa_devices(self) -> dict[str, list[dict[str, str]]]:
        """The ALSA devices sources and sinks may open, per direction."""
        def read() -> dict[str, list[dict[str, str]]]:
            return {direction: [d.as_json() for d in devices.available_devices(direction)]
                    for direction in devices.DIRECTIONS}
        # alsa-lib reads its configuration files: not on the event loop
        return await trio.to_thread.run_sync(read)

    async def media_files(self) -> dict[str, Any]:
        """The media folder and the files a file source may play."""
        folder = media.media_folder(self.config)
        files = await trio.to_thread.run_sync(media.list_media, folder)
        return {"folder": str(folder), "files": [f.as_json() for f in files]}

    @staticmethod
    def local_name() -> str:
        """``<hostname>.local``: the name avahi announces the box by."""
        return host_label() + ".local"

    @staticmethod
    async def last_hour_of_logs() -> tuple[str, bytes]:
        """Where the log came from, and its last hour (``appliance.logs``)."""
        return await logs.last_hour()

    @staticmethod
    def metrics_text(reading: Callable[[], dict[str, Any]]) -> tuple[bytes, str]:
        """``reading`` (a status) in Prometheus' text format, and its media type."""
        return metrics.scrape(reading), metrics.CONTENT_TYPE

    @staticmethod
    def read_backup(body: Any) -> Backup:
        """A backup file checked through the model (``appliance.backup``)."""
        return read_backup(body)

    # ---- the HAT's controls --------------------------------------------------------

    async def hat_controls(self) -> dict[str, Any]:
        """The HAT's controls now (``appliance.hat_controls``)."""
        return await self.hat.read()

    async def use_hat_device(self, name: str) -> dict[str, Any]:
        return await self.hat.use_device(name)

    async def set_hat_control(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        return await self.hat.set_control(name, changes)

    def announced_streams(self) -> dict[str, Any]:
        """The streams announced on the LAN (SAP), for the admin page to add."""
        return {"streams": self.sap.streams(), "counts": dict(self.sap.counts),
                "groups": list(self.sap.joined), "port": self.sap.port}

    def network_sources(self) -> dict[str, dict[str, Any]]:
        return {source_id: self._network_source(source_id, spec)
                for source_id, spec in self.engine.sources().items()
                if spec.kind in NETWORK_KINDS}

    def open_to_listeners(self, kind: str, ident: str) -> bool:
        """Whether anyone who may listen may listen to this: a channel (an
        Opus sink) is; a source, or a route from it, only when the source is
        ``public``. ``NotFoundError`` when there is no such thing to listen to."""
        entity = self.graph.require(kind, ident)
        if kind == "sink":
            if entity.spec.kind != "opus":
                raise NotFoundError(f"no channel {ident!r}")
            return True
        source_id = ident if kind == "source" else entity.spec.source_id
        return bool(self.graph.require("source", source_id).spec.public)

    def where_to_listen(self, sink_id: str, avoid: str | None = None) -> dict[str, Any]:
        """Where a new listener of the channel goes (the listen page asks):
        ``{"janus": {...}}``, a Janus relay's streaming mountpoint, while the
        box is full or the channel is ``relays_first`` and a healthy relay
        open to listeners carries it (the least loaded, not ``avoid``);
        otherwise ``{"box": True}``: WHEP to the box (which sends it on with
        307 to a WHEP relay when it has one, see ``overflow_url``)."""
        self.open_to_listeners("sink", sink_id)
        sink = self.graph.require("sink", sink_id).spec
        if sink.relays_first or self.sessions.full():
            taken = self.relays.take_listener(sink_id, avoid)
            if taken is not None:
                relay, carried = taken
                return {"janus": {"relay": relay.id, "url": relay.spec.listeners_url,
                                  "mountpoint": carried.mountpoint}}
        return {"box": True}

    def overflow_url(self, sink_id: str, *, full: bool) -> str | None:
        """A WHEP relay's address for a new WHEP listener of the channel
        (307): while the box is ``full``, or at once for a ``relays_first``
        channel. Janus relays are not here: a WHEP client cannot follow a
        redirect into Janus's own API (the listen page asks
        ``where_to_listen`` instead)."""
        if not full and not self.graph.require("sink", sink_id).spec.relays_first:
            return None
        return self.publications.overflow_url(sink_id)

    async def open_session(self, target: tuple[str, str], offer: Offer, client: str,
                           variant: Variant = Variant()) -> tuple[Session, str]:
        """A listener to a sink, or (through a temporary sink) to a source or
        a route; to a hearing variant of it when asked."""
        kind, ident = target
        entity = self.graph.require(kind, ident)
        route = None
        if kind == "source":
            route = RouteSpec(source_id=ident, sink_id="")
        elif kind == "route":
            route = entity.spec
        return await self.sessions.open(target, offer, client, temporary_route=route,
                                        variant=variant)

    # ---- status ------------------------------------------------------------------

    def listener_counts(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {
            "sinks": {s: 0 for s in self.graph.registry("sink")}, "sources": {}, "routes": {}}
        answered = self.sessions.answered()
        for session in answered:
            kind, ident = session.target
            bucket = counts[kind + "s"]
            bucket[ident] = bucket.get(ident, 0) + 1
        return {"total": len(answered), **counts}

    def status(self) -> dict[str, Any]:
        stats = self.engine.stats()
        feed = self.feed
        devices = [{"kind": k, "id": i, **v} for (k, i), v in sorted(feed.devices.items())]
        return {
            "name": self.config.name,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "listeners": self.listener_counts(),
            "max_listeners": self.config.server.max_listeners,
            # each listener's health: loss, jitter and round-trip time from its RTCP reports
            "sessions": [s.health() for s in self.sessions.answered()],
            "devices": devices,
            "network_sources": self.network_sources(),
            # channels published to WHIP servers: state, attempts, the last refusal
            "publications": self.publications.status(),
            # Janus relays: state, the channels they carry, mountpoints, viewers
            "relays": self.relays.status(),
            # the power supply, heat, the clock, the disk (appliance.board)
            "board": self.board.read().as_dict(),
            # the wall clock: whether the admin page may set it (no network time)
            "clock": self.clock.status(),
            "xruns": {"total": sum(feed.xruns.values()),
                      "sources": {i: n for (k, i), n in feed.xruns.items() if k == "source"},
                      "sinks": {i: n for (k, i), n in feed.xruns.items() if k == "sink"}},
            "engine": {"sources": stats.sources, "sinks": stats.sinks, "routes": stats.routes,
                       "listeners": stats.listeners, "threads": stats.threads,
                       "events_posted": stats.events_posted,
                       "events_coalesced": stats.events_coalesced,
                       "events_dropped": self.engine.dropped_events,
                       # the lean transport's port and what it refused (0 when it is off)
                       "lean": {"port": stats.lean_port, "datagrams_in": stats.lean_datagrams_in,
                                "stun_rejected": stats.lean_stun_rejected,
                                "dtls_rejected": stats.lean_dtls_rejected,
                                "rtcp_rejected": stats.lean_rtcp_rejected,
                                "junk": stats.lean_junk, "send_dropped": stats.lean_send_dropped}},
        }

    def census(self) -> dict[str, int]:
        """Everything a listener can leave behind; all zero when idle (tests)."""
        return {
            "sessions": len(self.sessions),
            "publishers": len(self.publishers),
            "engine_listeners": len(self.engine.listeners()),
            "engine_stats_listeners": self.engine.stats().listeners,
            "temporary_sinks": sum(map(DerivedSink.is_derived, self.engine.sinks())),
            "temporary_routes": sum(map(DerivedSink.is_derived, self.engine.routes())),
        }

    # ---- shutdown ----------------------------------------------------------------

    def begin_close(self) -> None:
        """Refuse new listeners and end live-event streams (the server is
        stopping); sessions end in ``aclose``."""
        self.sessions.closing = True
        self.publishers.closing = True
        self.feed.close()

    async def aclose(self) -> None:
        """End every session and wait (bounded) for their cleanup."""
        self.begin_close()
        await self.sessions.aclose()
        await self.publishers.aclose()
        await self.publications.aclose()
        await self.relays.aclose()


def _described(body: Any) -> Any:
    """A source's body may carry an RTP stream's SDP (``"sdp"``: typed in,
    or from a device's page) instead of its fields; fields given beside it
    win (``interface``, ``latency_ms``, a narrower ``allow_from``)."""
    if not isinstance(body, dict) or "sdp" not in body:
        return body
    try:
        described = describe_stream(body["sdp"]).source_fields()
    except InvalidError as error:
        raise InvalidError(f"sdp: {error}") from None
    return {**described, **{k: v for k, v in body.items() if k != "sdp"}}


_ptp4l_seen: tuple[float, bool] = (-1e9, False)


def ptp4l_running() -> bool:
    """Whether linuxptp's ptp4l runs on this machine (looked up at most
    every 5 s: /proc has a directory per process)."""
    global _ptp4l_seen
    at, running = _ptp4l_seen
    now = time.monotonic()
    if now - at > 5.0:
        running = False
        for comm in Path("/proc").glob("[0-9]*/comm"):
            try:
                if comm.read_text().strip() == "ptp4l":
                    running = True
                    break
            except OSError:
                continue   # it ended meanwhile
        _ptp4l_seen = (now, running)
    return running


@asynccontextmanager
async def open_service(config: Config, *, store: Store | None = None) -> AsyncIterator[Service]:
    """Engine, service nursery and feed for the duration of the block; the
    graph comes from the store (or the config's seed)."""
    logs.install()   # the last hour, for /api/logs where there is no journal
    if store is None:
        store = Store(config.state_dir)
        await trio.to_thread.run_sync(store.load)
    graph = store.graph_for(config)
    async with open_engine(config.engine) as engine:
        async with trio.open_nursery() as nursery:
            service = Service(config, engine, nursery, store)
            nursery.start_soon(service.feed.run)
            nursery.start_soon(service.clock.jumps.run)
            nursery.start_soon(service.venue.run)
            await nursery.start(service.sap.run)
            try:
                await service.graph.load(graph)
                await service.hat.restore()
                service.start_publications()
                service.start_relays()
                yield service
            finally:
                with trio.CancelScope(shield=True):
                    await service.aclose()
                nursery.cancel_scope.cancel()


