"""The engine's Python face: ``async with open_engine(settings) as engine``.

The C engine does all audio work; this module configures it and turns its
events into trio. Events arrive on the engine's event thread, are handed to
the trio loop with ``trio.from_thread.run_sync`` and land in ``engine.events``
(a trio memory channel). Lifecycle events are never dropped: when the channel
is full the event thread waits for room (that thread is not an audio thread,
so waiting there is harmless). Level events are dropped instead.

Calls that may wait for the engine's own threads (removing things, closing)
run in a worker thread so the trio loop stays free to take the events those
threads may be trying to deliver.
"""
from __future__ import annotations

import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Sequence

import trio

from . import _native
from ._native import EngineError, ErrorCode, RawEvent, call, check, engine_error, ffi, lib
from .model import MAX_CHANNELS, EngineSettings, RouteSpec, SinkSpec, SourceSpec, Variant
from .events import (
    DROPPABLE_EVENTS, AnswerFailed, AnswerReady, CandidateGathered, DeviceLost,
    DeviceRestored, Event, LevelsMeasured, ListenerEvent, ListenerState,
    ListenerStateChanged, OfferReady, XrunOccurred,
)

__all__ = ["open_engine", "Engine", "Listener", "EngineSettings", "SourceSpec", "SinkSpec",
           "RouteSpec", "EngineStats", "SinkStats", "NetSourceStats", "ListenerStats", "EngineError",
           "ErrorCode", "live_engine_threads"]


@dataclass(frozen=True)
class EngineStats:
    sources: int
    sinks: int
    routes: int
    listeners: int
    threads: int
    events_posted: int
    events_coalesced: int
    # the lean transport: its UDP port (0 = not running) and what it refused
    lean_port: int = 0
    lean_datagrams_in: int = 0
    lean_stun_rejected: int = 0    # bad MESSAGE-INTEGRITY, unknown ufrag, malformed
    lean_dtls_rejected: int = 0    # DTLS from an address that never passed ICE
    lean_rtcp_rejected: int = 0    # RTP/RTCP from an unknown address, or failing SRTCP
    lean_junk: int = 0             # neither STUN, DTLS nor RTP/RTCP
    lean_send_dropped: int = 0     # packets the socket would not take


@dataclass(frozen=True)
class SinkStats:
    listeners: int
    frames_encoded: int
    packets_out: int
    underruns: int
    send_latency_p50_ms: float
    send_latency_p95_ms: float
    send_latency_samples: int


@dataclass(frozen=True)
class NetSourceStats:
    """What a network source took in and refused (``ae_net_source_stats``)."""
    packets: int
    refused: int                 # from an address ``allow_from`` does not name
    malformed: int
    other_program: int
    format_changes: int
    resyncs: int                 # the mixer started again from the target (a gap, a jump)
    late: int                    # RTP: late or repeated
    lost: int                    # RTP: never came (silence, then a fade in)
    restarts: int                # RTP: a new SSRC or a jump in sequence numbers
    reordered: int               # RTP: came after later ones, still in time
    jitter_ms: float             # RTP: interarrival jitter (RFC 3550)
    receiving: bool              # something came in the last second
    rate: int                    # the stream's format; 0 before the first packet
    bits: int
    channels: int
    buffered_ms: float | None    # ahead of the mixer; None while nothing reads it
    correction_ppm: float        # the resampler's steering against the sender's clock
    sender: str
    refused_from: str
    program_refused: str


ICE_CREDENTIAL_MAX = 257   # the engine's AE_ICE_CREDENTIAL_MAX


@dataclass(frozen=True)
class ListenerStats:
    state: ListenerState
    last_rx_age_s: float | None  # seconds since the peer last sent anything
    packets_sent: int
    bytes_sent: int
    transport: str = "webrtcbin"          # "lean", "webrtcbin" or "forward"
    # from the peer's RTCP receiver reports (lean transport); None until one came
    rtcp_reports: int = 0
    fraction_lost: float | None = None    # 0..1 over the last report's interval
    packets_lost: int | None = None       # cumulative, as the peer counts them
    jitter_ms: float | None = None
    rtt_ms: float | None = None           # round-trip time from LSR/DLSR


_TRANSPORTS = {"auto": lib.AE_TRANSPORT_AUTO, "lean": lib.AE_TRANSPORT_LEAN,
               "webrtcbin": lib.AE_TRANSPORT_WEBRTCBIN}


_TRANSPORT_NAMES = {lib.AE_TRANSPORT_LEAN: "lean", lib.AE_TRANSPORT_WEBRTCBIN: "webrtcbin",
                    lib.AE_TRANSPORT_FORWARD: "forward"}


_STATES = {
    lib.AE_LISTENER_NEW: ListenerState.NEW,
    lib.AE_LISTENER_CHECKING: ListenerState.CHECKING,
    lib.AE_LISTENER_CONNECTED: ListenerState.CONNECTED,
    lib.AE_LISTENER_COMPLETED: ListenerState.COMPLETED,
    lib.AE_LISTENER_FAILED: ListenerState.FAILED,
    lib.AE_LISTENER_DISCONNECTED: ListenerState.DISCONNECTED,
    lib.AE_LISTENER_CLOSED: ListenerState.CLOSED,
}


def live_engine_threads() -> int:
    """Threads started by engines in this process that still run."""
    return lib.ae_live_threads()


def abandoned_engine_threads() -> int:
    """Device threads given up on because their driver never returned."""
    return lib.ae_abandoned_threads()


@dataclass
class _Entity:
    handle: Any
    spec: Any
    event_id: int   # the engine's id for it in events


class Listener:
    """One WebRTC listener on a sink. Its events (``AnswerReady`` or
    ``AnswerFailed``, candidates and state changes; webrtcbin may report a
    state change before its answer) arrive on ``events``, in order and never
    dropped. Get one with
    ``Engine.open_listener`` (or ``start_listener`` + ``aclose``)."""

    def __init__(self, engine: "Engine", handle: Any, sink_id: str):
        self._engine = engine
        self._handle = handle
        self.id: int = lib.ae_listener_id(handle)   # never reused
        self.sink_id = sink_id
        # few events per listener (an answer, its candidates, state changes)
        self._send, self.events = trio.open_memory_channel[ListenerEvent](math.inf)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _require(self) -> Any:
        if self._handle is None:
            raise engine_error(ErrorCode.NOT_FOUND, f"listener {self.id} is closed")
        return self._handle

    def add_candidate(self, mline_index: int, candidate: str) -> None:
        """A remote candidate ("candidate:..."); "" is end-of-candidates."""
        check(lib.ae_listener_add_candidate(self._require(), mline_index, candidate.encode()))

    def set_answer(self, answer_sdp: str) -> None:
        """A publication's answer from its WHIP server (checked by the engine:
        ``EngineError`` SDP with the reason)."""
        check(lib.ae_publication_set_answer(self._require(),
                                            answer_sdp.encode("utf-8", "replace")))

    def ice_restart(self) -> tuple[str, str]:
        """A publication's ICE restart: its new local (ufrag, pwd); its
        checks wait for ``restart_answer``."""
        ufrag = ffi.new("char[]", ICE_CREDENTIAL_MAX)
        pwd = ffi.new("char[]", ICE_CREDENTIAL_MAX)
        check(lib.ae_publication_ice_restart(self._require(), ufrag, pwd))
        return ffi.string(ufrag).decode(), ffi.string(pwd).decode()

    def restart_answer(self, ufrag: str, pwd: str, candidates: Sequence[str] = ()) -> None:
        """The server's answer to an ICE restart: its new credentials and
        candidates ("candidate:..."; none: its answer's again). Checked by
        the engine (``EngineError`` SDP with the reason)."""
        lines = "\n".join(candidates).encode("utf-8", "replace") if candidates else ffi.NULL
        check(lib.ae_publication_restart_answer(self._require(), ufrag.encode("utf-8", "replace"),
                                                pwd.encode("utf-8", "replace"), lines))

    def stats(self) -> ListenerStats:
        out = ffi.new("ae_listener_stats *")
        check(lib.ae_listener_stats_get(self._require(), out))
        age = None
        if out.last_rx_us:
            age = max(0.0, _monotonic_us() - out.last_rx_us) / 1e6
        reports = out.rtcp_reports
        return ListenerStats(
            _STATES.get(out.state, ListenerState.FAILED), age, out.packets_sent, out.bytes_sent,
            transport=_TRANSPORT_NAMES.get(out.transport, "webrtcbin"),
            rtcp_reports=reports,
            fraction_lost=out.fraction_lost if reports else None,
            packets_lost=out.packets_lost if reports else None,
            jitter_ms=out.jitter_ms if reports else None,
            rtt_ms=out.rtt_ms if out.rtt_ms >= 0 else None)

    async def aclose(self) -> None:
        """Remove the listener. Once this returns no event for it is delivered;
        calling it again does nothing, so every cleanup path may call it."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        self._engine._listeners.pop(self.id, None)
        self._send.close()
        if not lib.ae_listener_destroy_blocks(handle):   # lean: handed to its network thread
            call(lib.ae_listener_destroy, handle)
            return
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(call, lib.ae_listener_destroy, handle)


class Engine:
    """A running engine. Create it with ``open_engine``."""

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self._send, self.events = trio.open_memory_channel[Event](settings.event_buffer)
        self._token = trio.lowlevel.current_trio_token()
        self._handle: Any = None
        self._sources: dict[str, _Entity] = {}
        self._sinks: dict[str, _Entity] = {}
        self._routes: dict[str, _Entity] = {}
        self._listeners: dict[int, Listener] = {}
        self._names: dict[int, tuple[str, str]] = {}  # event id -> (kind, id)
        self.dropped_events = 0

    # ---- lifecycle -----------------------------------------------------

    def _create(self) -> None:
        s = self.settings
        cfg = ffi.new("ae_engine_config *")
        cfg.sample_rate = s.sample_rate
        cfg.level_interval_ms = s.level_interval_ms
        cfg.gather_timeout_ms = s.gather_timeout_ms
        cfg.max_listeners = s.max_listeners
        cfg.ice_tcp = int(s.ice_tcp)
        cfg.upnp = int(s.upnp)
        stun = ffi.new("char[]", s.stun_server.encode()) if s.stun_server else ffi.NULL
        cfg.stun_server = stun
        cfg.min_port, cfg.max_port = s.min_port, s.max_port
        cfg.realtime_priority = s.realtime_priority
        addresses = ffi.new("char[]", ",".join(s.ice_addresses).encode()) \
            if s.ice_addresses else ffi.NULL
        cfg.ice_addresses = addresses
        cfg.transport = _TRANSPORTS[s.transport]
        cfg.lean_port = s.lean_port
        cfg.consent_timeout_ms = max(1, round(s.consent_timeout_s * 1000))
        self._config_keepalive = (cfg, stun, addresses)
        self._user = _native.set_event_sink(self._on_raw_event)
        out = ffi.new("ae_engine **")
        check(lib.ae_engine_create(cfg, lib.ae_python_event_cb, self._user, out))
        self._handle = out[0]

    async def _close(self) -> None:
        # Close our side first: an event thread waiting for room in a full
        # channel is released at once, so destroy cannot wait on it.
        self._send.close()
        for listener in list(self._listeners.values()):
            listener._handle = None   # ae_engine_destroy removes them
            listener._send.close()
        handle, self._handle = self._handle, None
        if handle is not None:
            await trio.to_thread.run_sync(call, lib.ae_engine_destroy, handle)
        for registry in (self._listeners, self._routes, self._sinks, self._sources):
            registry.clear()
        self._names.clear()

    # ---- events (engine event thread -> trio) ----------------------------

    def _on_raw_event(self, raw: RawEvent) -> None:
        """Runs on the engine's event thread."""
        try:
            pending = trio.from_thread.run_sync(self._deliver, raw, trio_token=self._token)
            if pending is not None:
                trio.from_thread.run(self._send.send, pending, trio_token=self._token)
        except (trio.RunFinishedError, trio.ClosedResourceError, trio.BrokenResourceError,
                trio.Cancelled):
            pass

    def _deliver(self, raw: RawEvent) -> Event | None:
        """Runs in the trio thread: hands a listener's event to its listener,
        names the entity of any other and offers it on ``events``. Returns
        the event when it must not be dropped and the channel is full."""
        ev = raw.struct
        if ev.listener_id:
            listener = self._listeners.get(ev.listener_id)
            if listener is not None:  # else a late event for a listener that is gone
                try:
                    listener._send.send_nowait(self._listener_event(raw))
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
            return None
        event = self._entity_event(raw)
        if event is None:
            return None
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            if isinstance(event, DROPPABLE_EVENTS):
                self.dropped_events += 1
                return None
            return event
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        return None

    @staticmethod
    def _listener_event(raw: RawEvent) -> ListenerEvent:
        ev, lid, text = raw.struct, raw.struct.listener_id, raw.text or ""
        if ev.type == lib.AE_EVENT_ANSWER_READY:
            return AnswerReady(lid, text)
        if ev.type == lib.AE_EVENT_OFFER_READY:
            return OfferReady(lid, text)
        if ev.type == lib.AE_EVENT_ANSWER_FAILED:
            return AnswerFailed(lid, ev.code, text)
        if ev.type == lib.AE_EVENT_CANDIDATE_GATHERED:
            return CandidateGathered(lid, ev.mline, text)
        return ListenerStateChanged(lid, _STATES.get(ev.state, ListenerState.FAILED))

    def _entity_event(self, raw: RawEvent) -> Event | None:
        ev = raw.struct
        owner = self._names.get(ev.source_id or ev.sink_id)
        if owner is None:
            return None  # a late event for an entity that is gone
        kind, eid = owner
        if ev.type == lib.AE_EVENT_DEVICE_LOST:
            return DeviceLost(kind, eid, raw.text or "")
        if ev.type == lib.AE_EVENT_DEVICE_RESTORED:
            return DeviceRestored(kind, eid)
        if ev.type == lib.AE_EVENT_XRUN:
            return XrunOccurred(kind, eid, ev.count)
        if ev.type == lib.AE_EVENT_LEVELS:
            n = max(0, min(ev.channels, MAX_CHANNELS))
            return LevelsMeasured(kind, eid, tuple(ev.peak_dbfs[0:n]), tuple(ev.rms_dbfs[0:n]),
                                  since=ev.since_us / 1e6, measured_at=ev.time_us / 1e6)
        return None

    # ---- helpers -------------------------------------------------------

    def _require_open(self) -> None:
        if self._handle is None:
            raise engine_error(ErrorCode.CLOSED, "the engine is closed")

    def _register(self, registry: dict, kind: str, key: str, entity: _Entity) -> None:
        registry[key] = entity
        self._names[entity.event_id] = (kind, key)

    async def _destroy(self, registry: dict, kind: str, key: str, entity: _Entity,
                       destroy: Any) -> None:
        """Destroy in a worker thread, unknown meanwhile: a request in the
        trio thread (a listener, a publisher) cannot reach what is being
        freed. Known again if the engine refuses (busy)."""
        self._unregister(registry, key)
        try:
            await trio.to_thread.run_sync(call, destroy, entity.handle)
        except BaseException:
            self._register(registry, kind, key, entity)
            raise

    def _unregister(self, registry: dict, key: str) -> None:
        entity = registry.pop(key)
        self._names.pop(entity.event_id, None)

    @staticmethod
    def _lookup(registry: dict, kind: str, key: Any) -> Any:
        try:
            return registry[key]
        except KeyError:
            raise engine_error(ErrorCode.NOT_FOUND, f"no {kind} {key!r}") from None

    @staticmethod
    def _check_new(registry: dict, kind: str, key: str) -> None:
        if not isinstance(key, str) or not key:
            raise engine_error(ErrorCode.INVALID, f"a {kind} id must be a non-empty string")
        if key in registry:
            raise engine_error(ErrorCode.EXISTS, f"{kind} {key!r} exists already")

    # ---- sources ---------------------------------------------------------

    async def add_source(self, source_id: str, spec: SourceSpec) -> None:
        self._require_open()
        self._check_new(self._sources, "source", source_id)
        cfg = ffi.new("ae_source_config *")
        kinds = {"alsa": lib.AE_SOURCE_ALSA, "tone": lib.AE_SOURCE_TONE,
                 "clicks": lib.AE_SOURCE_TONE, "file": lib.AE_SOURCE_FILE,
                 "scream": lib.AE_SOURCE_SCREAM, "rtp": lib.AE_SOURCE_RTP,
                 "whip": lib.AE_SOURCE_WHIP}
        if spec.kind not in kinds:
            raise engine_error(ErrorCode.INVALID, f"unknown source kind {spec.kind!r}")
        cfg.kind = kinds[spec.kind]
        cfg.channels = spec.channels
        device = ffi.new("char[]", spec.device.encode())  # lives until the call returns
        cfg.device = device
        cfg.period_frames = spec.period_frames
        cfg.buffer_periods = spec.buffer_periods
        cfg.allow_absent = int(spec.allow_absent)
        cfg.tone_hz = spec.tone_hz
        cfg.tone_dbfs = spec.tone_dbfs if spec.tone_dbfs != 0 else -1e-9
        cfg.click_interval_ms = spec.click_interval_ms if spec.kind == "clicks" else 0
        path = ffi.new("char[]", spec.path.encode()) if spec.path is not None else ffi.NULL
        cfg.path = path
        # network: the strings live until the call returns, like device and path
        network = {name: ffi.new("char[]", text.encode()) for name, text in (
            ("address", spec.address), ("interface", spec.interface),
            ("allow_from", ",".join(spec.senders())), ("program", spec.program))}
        for name, text in network.items():
            setattr(cfg, name, text)
        cfg.port = spec.port
        cfg.latency_ms = spec.latency_ms
        cfg.rtp_encoding = {"L16": lib.AE_RTP_L16, "L24": lib.AE_RTP_L24, "opus": lib.AE_RTP_OPUS,
                            "PCMU": lib.AE_RTP_PCMU, "PCMA": lib.AE_RTP_PCMA}[spec.encoding]
        cfg.payload_type = spec.payload_type
        cfg.clock_rate = spec.clock_rate
        cfg.stream_channels = spec.stream_channels
        out = ffi.new("ae_source **")
        # Called from the trio thread, not a worker: the source's first event
        # (DeviceLost for an absent device) can then only be handled after it
        # is registered. Creating waits for no engine thread, and ALSA devices
        # are opened non-blocking.
        call(lib.ae_source_create, self._handle, cfg, out)
        self._register(self._sources, "source", source_id,
                       _Entity(out[0], spec, lib.ae_source_id(out[0])))

    def set_tone(self, source_id: str, hz: float, dbfs: float) -> None:
        entity = self._lookup(self._sources, "source", source_id)
        check(lib.ae_source_set_tone(entity.handle, hz, dbfs if dbfs != 0 else -1e-9))
        entity.spec = replace(entity.spec, tone_hz=hz, tone_dbfs=dbfs)

    def net_source_stats(self, source_id: str) -> NetSourceStats:
        entity = self._lookup(self._sources, "source", source_id)
        out = ffi.new("ae_net_source_stats *")
        check(lib.ae_source_net_stats(entity.handle, out))

        def text(chars: Any) -> str:
            return ffi.string(chars).decode("utf-8", "replace")

        return NetSourceStats(
            out.packets, out.refused, out.malformed, out.other_program, out.format_changes,
            out.resyncs, out.late, out.lost, out.restarts, out.reordered,
            round(out.jitter_ms, 2), bool(out.receiving), out.rate, out.bits, out.channels,
            None if out.buffered_ms < 0 else round(out.buffered_ms, 2),
            round(out.correction_ppm, 1), text(out.sender), text(out.refused_from),
            text(out.program_refused))

    def source_click_times(self, source_id: str, limit: int = 256) -> list[float]:
        """Monotonic times (seconds, same clock as time.monotonic) of recent
        clicks a click source emitted, oldest first."""
        entity = self._lookup(self._sources, "source", source_id)
        buf = ffi.new("int64_t[]", limit)
        n = lib.ae_source_click_times(entity.handle, buf, limit)
        check(n)
        return [buf[i] / 1e6 for i in range(n)]

    async def remove_source(self, source_id: str) -> None:
        entity = self._lookup(self._sources, "source", source_id)
        if any(r.spec.source_id == source_id for r in self._routes.values()):
            raise engine_error(ErrorCode.BUSY, f"source {source_id!r} still has routes")
        await self._destroy(self._sources, "source", source_id, entity, lib.ae_source_destroy)

    # ---- sinks -----------------------------------------------------------

    async def add_sink(self, sink_id: str, spec: SinkSpec, *, on_demand: bool = False) -> None:
        """``on_demand``: an Opus sink mixed only while a listener hears it
        (a listener's temporary sink, so that a session that never connects
        costs no mixer time)."""
        self._require_open()
        self._check_new(self._sinks, "sink", sink_id)
        kinds = {"opus": lib.AE_SINK_OPUS, "alsa": lib.AE_SINK_ALSA}
        if spec.kind not in kinds:
            raise engine_error(ErrorCode.INVALID, f"unknown sink kind {spec.kind!r}")
        cfg = ffi.new("ae_sink_config *")
        device = ffi.new("char[]", spec.device.encode())
        cfg.kind = kinds[spec.kind]
        cfg.channels = spec.channels
        cfg.frame_us = int(round(spec.frame_ms * 1000))
        cfg.bitrate = spec.bitrate
        cfg.low_delay = 1 if spec.low_delay else -1
        cfg.complexity = spec.complexity
        cfg.device = device
        cfg.period_frames = spec.period_frames
        cfg.buffer_periods = spec.buffer_periods
        cfg.allow_absent = int(spec.allow_absent)
        cfg.delay_ms = spec.delay_ms
        cfg.on_demand = int(on_demand)
        out = ffi.new("ae_sink **")
        call(lib.ae_sink_create, self._handle, cfg, out)  # in this thread: see add_source
        self._register(self._sinks, "sink", sink_id, _Entity(out[0], spec, lib.ae_sink_id(out[0])))

    async def add_variant(self, sink_id: str, parent_id: str, variant: Variant, *,
                          on_demand: bool = False) -> None:
        """A sink whose input is the Opus sink ``parent_id``'s mix (after its
        delay) processed by ``variant``, with an encoder of its own. It
        follows the parent's routes; the parent cannot be removed before it.
        ``on_demand`` as for ``add_sink``."""
        self._require_open()
        self._check_new(self._sinks, "sink", sink_id)
        parent = self._lookup(self._sinks, "sink", parent_id)
        vcfg = ffi.new("ae_variant_config *")
        vcfg.mono, vcfg.clear_speech = int(variant.mono), int(variant.clear)
        vcfg.balance = variant.balance
        cfg = ffi.new("ae_sink_config *")
        cfg.bitrate = parent.spec.bitrate
        cfg.low_delay = 1 if parent.spec.low_delay else -1
        cfg.complexity = parent.spec.complexity
        cfg.on_demand = int(on_demand)
        out = ffi.new("ae_sink **")
        call(lib.ae_sink_create_variant, parent.handle, vcfg, cfg, out)  # see add_source
        spec = replace(parent.spec, channels=2, delay_ms=0)
        self._register(self._sinks, "sink", sink_id, _Entity(out[0], spec, lib.ae_sink_id(out[0])))

    def set_sink_delay(self, sink_id: str, delay_ms: int) -> SinkSpec:
        """Change a sink's alignment delay while it runs."""
        entity = self._lookup(self._sinks, "sink", sink_id)
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) \
                or not -2**31 <= delay_ms < 2**31:   # the engine says which range
            raise engine_error(ErrorCode.INVALID, "the delay must be a whole number of ms")
        check(lib.ae_sink_set_delay(entity.handle, delay_ms))
        entity.spec = replace(entity.spec, delay_ms=delay_ms)
        return entity.spec

    async def remove_sink(self, sink_id: str) -> None:
        entity = self._lookup(self._sinks, "sink", sink_id)
        if any(r.spec.sink_id == sink_id for r in self._routes.values()):
            raise engine_error(ErrorCode.BUSY, f"sink {sink_id!r} still has routes")
        await self._destroy(self._sinks, "sink", sink_id, entity, lib.ae_sink_destroy)

    def sink_stats(self, sink_id: str) -> SinkStats:
        entity = self._lookup(self._sinks, "sink", sink_id)
        out = ffi.new("ae_sink_stats *")
        check(lib.ae_sink_stats_get(entity.handle, out))
        return SinkStats(out.listeners, out.frames_encoded, out.packets_out, out.underruns,
                         out.send_latency_p50_us / 1000, out.send_latency_p95_us / 1000,
                         out.send_latency_samples)

    # ---- routes ----------------------------------------------------------

    async def add_route(self, route_id: str, spec: RouteSpec) -> None:
        self._require_open()
        self._check_new(self._routes, "route", route_id)
        source = self._lookup(self._sources, "source", spec.source_id)
        sink = self._lookup(self._sinks, "sink", spec.sink_id)
        cfg = ffi.new("ae_route_config *")
        cfg.gain_db = spec.gain_db
        cfg.muted = int(spec.muted)
        cfg.source_channel = spec.source_channel
        out = ffi.new("ae_route **")
        check(lib.ae_route_create(source.handle, sink.handle, cfg, out))
        self._routes[route_id] = _Entity(out[0], spec, 0)  # routes post no events

    def update_route(self, route_id: str, *, gain_db: float | None = None,
                     muted: bool | None = None) -> RouteSpec:
        entity = self._lookup(self._routes, "route", route_id)
        if gain_db is not None:
            if not math.isfinite(gain_db):
                raise engine_error(ErrorCode.INVALID, "gain must be a finite number of dB")
            check(lib.ae_route_set_gain(entity.handle, gain_db))
            entity.spec = replace(entity.spec, gain_db=gain_db)
        if muted is not None:
            check(lib.ae_route_set_muted(entity.handle, int(muted)))
            entity.spec = replace(entity.spec, muted=muted)
        return entity.spec

    async def remove_route(self, route_id: str) -> None:
        entity = self._lookup(self._routes, "route", route_id)
        check(lib.ae_route_destroy(entity.handle))
        del self._routes[route_id]

    # ---- listeners -------------------------------------------------------

    def start_listener(self, sink_id: str, offer_sdp: str) -> Listener:
        """Start answering an offer; ``AnswerReady`` or ``AnswerFailed``
        follows on the listener's ``events``. The caller must ``aclose`` it."""
        self._require_open()
        sink = self._lookup(self._sinks, "sink", sink_id)
        if not isinstance(offer_sdp, str):
            raise engine_error(ErrorCode.SDP, "the offer must be text")
        out = ffi.new("ae_listener **")
        answer = ffi.new("char **")
        check(lib.ae_listener_open(sink.handle, offer_sdp.encode("utf-8", "replace"), out,
                                   answer))
        return self._adopt(out[0], sink_id, answer[0])

    def _adopt(self, handle: Any, owner_id: str, answer: Any = ffi.NULL) -> Listener:
        """A new engine listener (or publisher, or publication) known by its
        id; an answer the engine made at once is its first event (no trip
        through the event thread). No checkpoint since the create: its first
        event cannot have been delivered."""
        listener = Listener(self, handle, owner_id)
        self._listeners[listener.id] = listener
        if answer != ffi.NULL:
            text = ffi.string(answer).decode("utf-8", "replace")
            lib.ae_listener_free_answer(answer)
            listener._send.send_nowait(AnswerReady(listener.id, text))
        return listener

    def start_publication(self, sink_id: str, ice_servers: Sequence[str] = ()) -> Listener:
        """Publish the Opus sink ``sink_id`` (WHIP out): ``OfferReady`` (or
        ``AnswerFailed``) follows on its ``events``, then the candidates
        gathered after it; its answer goes to ``set_answer``. ``ice_servers``:
        STUN and TURN servers as webrtcbin takes them (``stun://host:port``,
        ``turn://user:pass@host:port?transport=udp``, ``turns://...``; at
        most 4). The caller must ``aclose`` it."""
        self._require_open()
        sink = self._lookup(self._sinks, "sink", sink_id)
        out = ffi.new("ae_listener **")
        servers = "\n".join(ice_servers).encode() if ice_servers else ffi.NULL
        check(lib.ae_publication_open(sink.handle, servers, out))
        return self._adopt(out[0], sink_id)

    def start_forward(self, sink_id: str, host: str, port: int, *, payload_type: int = 111,
                      ssrc: int = 0, srtp_key: bytes | None = None) -> Listener:
        """Forward the Opus sink ``sink_id`` as RTP to ``host`` (a numeric
        address) and ``port``, SRTP (AES_CM_128_HMAC_SHA1_80) when
        ``srtp_key`` (30 bytes: key and salt) is given: a relay's ingest.
        Its packets flow at once; ``stats()`` counts them. It keeps the sink
        busy until ``aclose``."""
        self._require_open()
        sink = self._lookup(self._sinks, "sink", sink_id)
        cfg = ffi.new("ae_forward_config *")
        host_c = ffi.new("char[]", host.encode())     # lives until the call returns
        key_c = ffi.new("unsigned char[]", srtp_key) if srtp_key is not None else ffi.NULL
        cfg.host, cfg.port, cfg.payload_type = host_c, port, payload_type
        cfg.ssrc = ssrc & 0xFFFFFFFF
        cfg.srtp_key, cfg.srtp_key_len = key_c, len(srtp_key or b"")
        out = ffi.new("ae_listener **")
        check(lib.ae_forward_open(sink.handle, cfg, out))
        return self._adopt(out[0], sink_id)

    def start_publisher(self, source_id: str, offer_sdp: str) -> Listener:
        """A publisher (WHIP) into the whip source ``source_id``: its answer is
        the first of its ``events`` at once (``AnswerReady``). The caller must
        ``aclose`` it."""
        self._require_open()
        source = self._lookup(self._sources, "source", source_id)
        if not isinstance(offer_sdp, str):
            raise engine_error(ErrorCode.SDP, "the offer must be text")
        out = ffi.new("ae_listener **")
        answer = ffi.new("char **")
        check(lib.ae_publisher_open(source.handle, offer_sdp.encode("utf-8", "replace"), out,
                                    answer))
        return self._adopt(out[0], source_id, answer[0])

    @asynccontextmanager
    async def open_listener(self, sink_id: str, offer_sdp: str) -> AsyncIterator[Listener]:
        """A listener for the duration of the block; leaving it (any way)
        removes the listener from the engine."""
        listener = self.start_listener(sink_id, offer_sdp)
        try:
            yield listener
        finally:
            await listener.aclose()

    # ---- introspection -------------------------------------------------

    def sources(self) -> dict[str, SourceSpec]:
        return {k: v.spec for k, v in self._sources.items()}

    def sinks(self) -> dict[str, SinkSpec]:
        return {k: v.spec for k, v in self._sinks.items()}

    def routes(self) -> dict[str, RouteSpec]:
        return {k: v.spec for k, v in self._routes.items()}

    def listeners(self) -> dict[int, str]:
        """Listener id -> sink id (a publisher's: its source id)."""
        return {k: v.sink_id for k, v in self._listeners.items()}

    def stats(self) -> EngineStats:
        self._require_open()
        out = ffi.new("ae_engine_stats *")
        check(lib.ae_engine_stats_get(self._handle, out))
        return EngineStats(out.sources, out.sinks, out.routes, out.listeners, out.threads,
                           out.events_posted, out.events_coalesced, out.lean_port,
                           out.lean_datagrams_in, out.lean_stun_rejected, out.lean_dtls_rejected,
                           out.lean_rtcp_rejected, out.lean_junk, out.lean_send_dropped)


def _monotonic_us() -> float:
    # The engine stamps times with CLOCK_MONOTONIC, as time.monotonic does.
    return time.monotonic_ns() / 1000


@asynccontextmanager
async def open_engine(settings: EngineSettings | None = None) -> AsyncIterator[Engine]:
    """Start an engine for the duration of the block; closing it removes every
    listener, route, sink and source and stops every engine thread."""
    engine = Engine(settings or EngineSettings())
    engine._create()
    try:
        yield engine
    finally:
        with trio.CancelScope(shield=True):
            await engine._close()
