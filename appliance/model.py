"""The one model of the audio graph and the settings, and the one place that
checks them: the config file, the saved state and the admin API all turn
plain data (TOML tables, JSON objects) into these frozen values through
``build``, so they agree on every type and range.

Pure: it imports neither the engine nor the compiled module, so a config can
be checked on a machine without the C build. Errors are ``InvalidError``
whose message names the field and what it must be.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import ssl
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping
from urllib.parse import urlsplit

from .errors import InvalidError

__all__ = ["EngineSettings", "SourceSpec", "SinkSpec", "RouteSpec", "Variant", "SourceConfig",
           "PublicationSpec", "RelaySpec",
           "SinkConfig", "RouteConfig", "Graph", "KINDS", "RESERVED_IDS", "build",
           "check_id", "check_text", "entity_from_dict", "entity_to_dict", "spec_class",
           "ENGINE_SPECS", "bounded_fields", "redacted", "sent_privately"]

# Words that cannot be sink ids because they are path segments of the API.
RESERVED_IDS = frozenset({"source", "route"})
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_TEXT = 4096
# A BCP 47 language tag, well-formed in the common shape: language (2-3
# letters), optional script, region, variants ("fr", "pt-BR", "zh-Hant-TW",
# "de-CH-1996"); "" = not said.
LANGUAGE_TAG = re.compile(r"(?:[A-Za-z]{2,3}(?:-[A-Za-z]{4})?(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"
                          r"(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)?")


def _range(lo: float, hi: float) -> dict[str, Any]:
    return {"range": (lo, hi)}


def _limit(max_len: int) -> dict[str, Any]:
    return {"max_len": max_len}


def _ip_address(value: str) -> str | None:
    """A network source's address: an IP address, or "" (every local one)."""
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return "must be an IPv4 or IPv6 address (or empty: every local address)"
    return None


def _senders(value: tuple[str, ...]) -> str | None:
    """Who may send to a network source: "local", addresses and prefixes."""
    if len(value) > MAX_SENDER_PREFIXES:
        return f"names at most {MAX_SENDER_PREFIXES} prefixes"
    for item in value:
        if item == "local":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"has {item[:60]!r}: not \"local\", an address or a prefix like 192.0.2.0/24"
    return None


# ---- the limits the engine shares ---------------------------------------------------
# Every bound below and every field's range or choices is stated here once:
# the engine's own checks read them from native/ae_limits.h, which
# native/build_engine.py writes from this module at every build
# (appliance/engine_limits.py; docs/ENGINE.md, "Limits").

# the engine's per-channel arrays (levels, events, a route's channel pick) are this big
MAX_CHANNELS = 8
# an Opus encoder or stream: mono or stereo
OPUS_MAX_CHANNELS = 2
# a network source's allow list: the receiver's table of prefixes
MAX_SENDER_PREFIXES = 32
# the program tag of ScreamRouter's per-process packets: that many bytes on the wire
SCREAM_PROGRAM_LEN = 30
NET_LATENCY_MS = (2, 500)
RTP_RATES = (8000, 44100, 48000, 88200, 96000)
BALANCE_RANGE = (-100, 100)
# The named limits native/ae_limits.h carries besides the fields' bounds.
ENGINE_CONSTANTS = {"MAX_CHANNELS": MAX_CHANNELS, "OPUS_MAX_CHANNELS": OPUS_MAX_CHANNELS,
                    "MAX_SENDER_PREFIXES": MAX_SENDER_PREFIXES,
                    "SCREAM_PROGRAM_LEN": SCREAM_PROGRAM_LEN}
NETWORK_KINDS = ("scream", "rtp", "whip")
# a whip source's publish token: long enough that nobody guesses it (the
# admin API makes one of 32 characters when none is given)
PUBLISH_TOKEN_MIN = 24


# ---- the engine's settings and the graph's specs ---------------------------------

@dataclass(frozen=True)
class EngineSettings:
    # Opus and WebRTC's rate; the engine mixes at no other
    sample_rate: int = field(default=48000, metadata={"choices": (48000,)})
    level_interval_ms: int = field(default=50, metadata=_range(-1, 10000))
    gather_timeout_ms: int = field(default=2000, metadata=_range(0, 60000))
    max_listeners: int = field(default=500, metadata=_range(1, 100000))
    ice_tcp: bool = False
    upnp: bool = False
    stun_server: str | None = None
    min_port: int = field(default=0, metadata=_range(0, 65535))
    max_port: int = field(default=0, metadata=_range(0, 65535))
    realtime_priority: int = field(default=0, metadata=_range(0, 99))
    # local addresses to gather ICE candidates on; empty = every non-loopback
    # interface. Tests use ("127.0.0.1",) so nothing leaves the machine.
    ice_addresses: tuple[str, ...] = ()
    # the room in ``Engine.events`` (Python's own: the C engine never sees it)
    event_buffer: int = field(default=1024, metadata={**_range(1, 1 << 20), "engine": False})
    # which transport serves listeners: "auto" = the lean one (ICE-lite,
    # DTLS-SRTP, one UDP port) unless an offer needs webrtcbin (no rtcp-mux)
    transport: Literal["auto", "lean", "webrtcbin"] = "auto"
    # the lean transport's one UDP port for every listener; 0 = any free port
    lean_port: int = field(default=0, metadata=_range(0, 65535))
    # a lean listener whose peer sent no ICE consent check for this long ends
    consent_timeout_s: float = field(default=30.0, metadata=_range(0.1, 3600.0))


@dataclass(frozen=True)
class SourceSpec:
    kind: Literal["alsa", "tone", "clicks", "file", "scream", "rtp", "whip"]
    channels: int = field(default=2, metadata=_range(1, MAX_CHANNELS))
    # an ALSA device the appliance enumerated (appliance.devices), never free-form
    device: str = field(default="default", metadata=_limit(128))
    period_frames: int = field(default=128, metadata=_range(16, 8192))
    buffer_periods: int = field(default=4, metadata=_range(2, 64))
    allow_absent: bool = False
    # below the engine's Nyquist frequency (24 kHz at 48 kHz)
    tone_hz: float = field(default=440.0, metadata=_range(1.0, 23999.0))
    tone_dbfs: float = field(default=-12.0, metadata=_range(-120.0, 0.0))
    click_interval_ms: int = field(default=500, metadata=_range(1, 60000))
    # relative to the media folder (appliance.media)
    path: str | None = field(default=None, metadata=_limit(1024))
    # anyone who may listen may hear this source on its own (POST
    # /api/whep/source/<id>, or a route from it); off: only the admin may,
    # so a backstage microphone is heard only where a channel publishes it
    public: bool = False
    # network sources (kinds "scream", "rtp"): the multicast group joined
    # (on ``interface``) or a local address to bind ("" = every one), the port
    address: str = field(default="239.255.77.77", metadata={"max_len": 45, "check": _ip_address})
    port: int = field(default=4010, metadata=_range(1, 65535))
    interface: str = field(default="", metadata={
        "max_len": 15, "pattern": re.compile(r"[A-Za-z0-9_.:@-]*"),
        "what": "a network interface's name"})
    # who may send: "local" (a subnet of ``interface``, or of any of the
    # box's when none is named), addresses, prefixes; empty: "local" for a
    # multicast group, nobody for unicast
    allow_from: tuple[str, ...] = field(default=(), metadata={"check": _senders})
    # how much audio is kept ahead of the mixer (the sender's clock is steered to it)
    latency_ms: int = field(default=20, metadata=_range(*NET_LATENCY_MS))
    # ScreamRouter's per-process Scream: the program tag to take; "" = plain Scream
    program: str = field(default="", metadata={
        "max_len": SCREAM_PROGRAM_LEN, "pattern": re.compile(r"[ -~]*"),
        "what": "printable ASCII"})
    # RTP: what the stream's SDP says (its a=rtpmap line): L16 or L24 (AES67)
    # at 44.1-96 kHz, Opus at 48 kHz (1 or 2 channels), G.711 at 8 kHz
    encoding: Literal["L16", "L24", "opus", "PCMU", "PCMA"] = "L24"
    payload_type: int = field(default=96, metadata=_range(0, 127))
    clock_rate: int = field(default=48000, metadata={"choices": RTP_RATES})
    stream_channels: int = field(default=2, metadata=_range(1, MAX_CHANNELS))
    # the sender's reference clock as its SDP names it (a=ts-refclk, RFC
    # 7273: "ptp=IEEE1588-2008:<grandmaster>:<domain>"); shown, not followed
    refclk: str = field(default="", metadata={
        "max_len": 128, "pattern": re.compile(r"[!-~]*"), "what": "visible ASCII"})

    # whip: the Bearer token a publisher (WHIP POST /api/whip/<id>) shows
    publish_token: str = field(default="", metadata={"secret": True,
        "max_len": 128, "pattern": re.compile(r"[A-Za-z0-9._~-]*"),
        "what": "URL-safe characters (letters, digits, . _ ~ -)"})

    def problem(self) -> str | None:
        """What is wrong across fields (``build`` asks): a whip source is
        Opus (1 or 2 channels) and needs its publish token."""
        if self.kind != "whip":
            return None
        if self.channels > OPUS_MAX_CHANNELS:
            return f"channels: a whip source has 1 or {OPUS_MAX_CHANNELS} channels, not {self.channels}"
        if len(self.publish_token) < PUBLISH_TOKEN_MIN:
            return (f"publish_token: a whip source needs one of {PUBLISH_TOKEN_MIN} or more "
                    "characters (the admin API makes one when none is given)")
        return None

    def senders(self) -> tuple[str, ...]:
        """Who may send to this network source: ``allow_from``, or when it is
        empty "local" for a multicast group and nobody for unicast."""
        if self.allow_from:
            return self.allow_from
        multicast = bool(self.address) and ipaddress.ip_address(self.address).is_multicast
        return ("local",) if multicast else ()


@dataclass(frozen=True)
class SinkSpec:
    kind: Literal["opus", "alsa"]
    channels: int = field(default=2, metadata=_range(1, MAX_CHANNELS))
    frame_ms: float = field(default=10.0, metadata={"choices": (2.5, 5.0, 10.0, 20.0, 40.0,
                                                                60.0)})
    bitrate: int = field(default=128000, metadata=_range(6000, 510000))
    low_delay: bool = True
    complexity: int = field(default=5, metadata=_range(1, 10))
    device: str = field(default="default", metadata=_limit(128))
    period_frames: int = field(default=128, metadata=_range(16, 8192))
    buffer_periods: int = field(default=4, metadata=_range(2, 64))
    allow_absent: bool = False
    # what listeners see (the listen page, the signs); the engine ignores them
    language: str = field(default="", metadata={"max_len": 35, "pattern": LANGUAGE_TAG,
                                                "what": "a BCP 47 language tag like fr or pt-BR"})
    description: str = field(default="", metadata=_limit(200))
    # alignment delay: listeners far from the stage hear the stream with the
    # room's own sound, not before it (the engine delays the sink's mix)
    delay_ms: int = field(default=0, metadata=_range(0, 500))
    # new listeners go to a healthy relay carrying the channel even while the
    # box has room (the box keeps the rest); the engine ignores it
    relays_first: bool = False

    def problem(self) -> str | None:
        """What is wrong across fields (``build`` asks). Opus for listeners
        is mono or stereo (the engine refuses more; an ALSA sink may have up
        to 8): said when the value comes in, not only at start."""
        if self.kind == "opus" and self.channels > OPUS_MAX_CHANNELS:
            return f"channels: an Opus sink has 1 or {OPUS_MAX_CHANNELS} channels, not {self.channels}"
        return None


@dataclass(frozen=True)
class RouteSpec:
    source_id: str = field(metadata={"id": "source"})
    sink_id: str = field(metadata={"id": "sink"})
    gain_db: float = field(default=0.0, metadata=_range(-120.0, 24.0))
    muted: bool = False
    # 0 = all channels; 1..N = just that one
    source_channel: int = field(default=0, metadata=_range(0, MAX_CHANNELS))


def _whip_url(value: str) -> str | None:
    """A WHIP endpoint: an http(s) URL with a host, nothing else."""
    try:
        parts = urlsplit(value)
        _ = parts.port   # a port that is not a number raises here
    except ValueError:
        return "must be an http:// or https:// URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return None


def _certificates(value: str) -> str | None:
    """PEM certificates OpenSSL can trust ("" = the system's CAs)."""
    if value:
        try:
            ssl.create_default_context(cadata=value)
        except (ssl.SSLError, ValueError):
            return "must be PEM certificates (-----BEGIN CERTIFICATE-----)"
    return None


@dataclass(frozen=True)
class PublicationSpec:
    """A channel (an Opus sink) published to a WHIP server (RFC 9725): the
    box as the WHIP client, its listeners' encode, no second encoder."""
    sink_id: str = field(metadata={"id": "sink"})
    url: str = field(metadata={"max_len": 2048, "pattern": re.compile(r"[!-~]+"),
                               "what": "a URL", "check": _whip_url})
    # the server's Bearer token ("" = none)
    token: str = field(default="", metadata={"secret": True, "max_len": 4096, "pattern": re.compile(r"[!-~]*"),
                                             "what": "visible ASCII"})
    # the server's certificate or its CA (PEM), trusted instead of the
    # system's CAs: another appliance's own certificate
    tls_ca: str = field(default="", metadata={"max_len": 16384, "check": _certificates})
    # where the channel's new listeners go (307) while this box is full and
    # the publication is live: the server's WHEP endpoint for it ("" = none)
    relay_whep_url: str = field(default="", metadata={
        "max_len": 2048, "pattern": re.compile(r"[!-~]*"), "what": "a URL",
        "check": lambda value: _whip_url(value) if value else None})

    def problem(self) -> str | None:
        """A token never crosses the network in the clear: with one, the
        URL is https:// unless it names this machine (loopback)."""
        if self.token and not sent_privately(self.url):
            return "url: a bearer token is sent only over https:// (or to this machine)"
        return None


def sent_privately(url: str) -> bool:
    """Whether what is sent to ``url`` stays private: https://, or http://
    to this machine (loopback)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return True
    try:
        return ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return parts.hostname == "localhost"


def _optional_url(value: str) -> str | None:
    return _whip_url(value) if value else None


def _sink_ids(value: tuple[str, ...]) -> str | None:
    for sink_id in value:
        if not _ID.fullmatch(sink_id):
            return f"must name channels by their ids ({sink_id[:64]!r} is none)"
    return None if len(set(value)) == len(value) else "names a channel twice"


@dataclass(frozen=True)
class RelaySpec:
    """A Janus server that carries channels to more listeners: the box
    creates a streaming mountpoint per channel through Janus's HTTP API and
    forwards the channel's Opus to it as RTP (SRTP off the LAN)."""
    # Janus's HTTP API, e.g. https://relay.example/janus
    url: str = field(metadata={"max_len": 2048, "pattern": re.compile(r"[!-~]+"),
                               "what": "a URL", "check": _whip_url})
    channels: tuple[str, ...] = field(default=(), metadata={"check": _sink_ids})
    # Janus's api_secret (sent as "apisecret" with every request; "" = none)
    api_secret: str = field(default="", metadata={"secret": True, "max_len": 1024,
                                                  "pattern": re.compile(r"[!-~]*"),
                                                  "what": "visible ASCII"})
    # the streaming plugin's admin_key, needed to create mountpoints when set there
    admin_key: str = field(default="", metadata={"secret": True, "max_len": 1024,
                                                 "pattern": re.compile(r"[!-~]*"),
                                                 "what": "visible ASCII"})
    tls_ca: str = field(default="", metadata={"max_len": 16384, "check": _certificates})
    # SRTP to the mountpoint: auto = when the relay's address is not on the LAN
    srtp: Literal["auto", "on", "off"] = "auto"
    # Janus's HTTP API as listeners' browsers reach it, when not ``url``
    # (e.g. the relay's public name while the box uses its LAN address)
    listen_url: str = field(default="", metadata={"max_len": 2048,
                                                  "pattern": re.compile(r"[!-~]*"),
                                                  "what": "a URL", "check": _optional_url})

    def problem(self) -> str | None:
        if (self.api_secret or self.admin_key) and not sent_privately(self.url):
            return "url: a secret is sent only over https:// (or to this machine)"
        if self.listen_url and self.api_secret:
            # listeners would need the secret, which never leaves the box
            return ("listen_url: listeners cannot use a Janus that has an api_secret "
                    "(run the listener-facing Janus without one)")
        return None

    @property
    def for_listeners(self) -> bool:
        """Whether listeners may be sent here: Janus's API with an api_secret
        is closed to them (the secret is the box's alone)."""
        return not self.api_secret

    @property
    def listeners_url(self) -> str:
        return self.listen_url or self.url


BALANCE_STEP = 25
_BALANCE = re.compile(r"-?(?:0|[1-9][0-9]{0,2})")


@dataclass(frozen=True)
class Variant:
    """A hearing variant of a channel, chosen by a listener: both ears the
    same (``mono``), the speech band made clearer and louder (``clear``), a
    left/right ``balance`` (-100 left only .. 100 right only, in steps of
    ``BALANCE_STEP`` so listeners share streams). The plain variant is the
    channel itself."""
    mono: bool = False
    clear: bool = False
    balance: int = field(default=0, metadata=_range(*BALANCE_RANGE))

    @property
    def plain(self) -> bool:
        return self == Variant()

    @property
    def key(self) -> str:
        """The variant's one name, the same for every way of asking for it
        ("" for the plain channel)."""
        parts = ["mono"] * self.mono + ["clear"] * self.clear
        if self.balance:
            parts.append(f"bal{self.balance}")
        return ".".join(parts)

    @classmethod
    def from_query(cls, items: Iterable[tuple[str, str]]) -> "Variant":
        """From a request's query (every pair, repeats included):
        ``mono=0|1``, ``clear=0|1``, ``balance=<-100..100, a multiple of 25>``;
        any other name, a repeated one or another value is refused."""
        seen: dict[str, str] = {}
        for name, value in items:
            if name not in ("mono", "clear", "balance"):
                raise InvalidError("the query takes only mono, clear and balance")
            if name in seen:
                raise InvalidError(f"{name} is given twice")
            seen[name] = value
        out: dict[str, Any] = {}
        for name in ("mono", "clear"):
            if name in seen:
                if seen[name] not in ("0", "1"):
                    raise InvalidError(f"{name} must be 0 or 1")
                out[name] = seen[name] == "1"
        if "balance" in seen:
            text = seen["balance"]
            lo, hi = BALANCE_RANGE
            if not _BALANCE.fullmatch(text) or int(text) % BALANCE_STEP \
                    or not lo <= int(text) <= hi:
                raise InvalidError(f"balance must be a multiple of {BALANCE_STEP} "
                                   f"from {lo} to {hi}")
            out["balance"] = int(text)
        return cls(**out)


# ---- named entities and the graph -------------------------------------------------

@dataclass(frozen=True)
class SourceConfig:
    id: str
    name: str
    spec: SourceSpec


@dataclass(frozen=True)
class SinkConfig:
    id: str
    name: str
    spec: SinkSpec


@dataclass(frozen=True)
class RouteConfig:
    id: str
    name: str
    spec: RouteSpec


EntityConfig = SourceConfig | SinkConfig | RouteConfig

# kind -> (spec class, entity class): the one table of the three kinds
KINDS: dict[str, tuple[type, type]] = {
    "source": (SourceSpec, SourceConfig),
    "sink": (SinkSpec, SinkConfig),
    "route": (RouteSpec, RouteConfig),
}


def spec_class(kind: str) -> type:
    return KINDS[kind][0]


# What the engine is given, by the prefix of its bounds in native/ae_limits.h.
ENGINE_SPECS: dict[str, type] = {"ENGINE": EngineSettings, "SOURCE": SourceSpec,
                                 "SINK": SinkSpec, "ROUTE": RouteSpec, "VARIANT": Variant}


def redacted(value: Any) -> Any:
    """``value`` (a value of this model, or a tuple of them, nested as deep
    as it goes) with every field marked ``secret`` that is set shown as
    "<set>": for printing a config or a spec where someone may read it."""
    if isinstance(value, tuple):
        return tuple(redacted(v) for v in value)
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    changes = {}
    for f in dataclasses.fields(value):
        current = getattr(value, f.name)
        if f.metadata.get("secret"):
            changes[f.name] = "<set>" if current else current
        elif dataclasses.is_dataclass(current) or isinstance(current, tuple):
            changes[f.name] = redacted(current)
    return dataclasses.replace(value, **changes)


def bounded_fields(cls: type) -> dict[str, Mapping[str, Any]]:
    """The fields of ``cls`` with a bound (a range or choices): name -> metadata."""
    return {f.name: f.metadata for f in dataclasses.fields(cls)
            if "range" in f.metadata or "choices" in f.metadata}


@dataclass(frozen=True)
class Graph:
    sources: tuple[SourceConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()

    def of(self, kind: str) -> tuple[Any, ...]:
        return getattr(self, kind + "s")

    def to_json(self) -> dict[str, Any]:
        return {kind + "s": [entity_to_dict(e) for e in self.of(kind)] for kind in KINDS}

    @classmethod
    def from_json(cls, data: Any, where: str = "graph") -> "Graph":
        """Check a graph read from JSON or TOML: every entity, unique ids,
        routes that name existing sources and sinks."""
        if not isinstance(data, Mapping):
            raise InvalidError(f"{where} must be an object")
        unknown = set(data) - {kind + "s" for kind in KINDS}
        if unknown:
            raise InvalidError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        at = f"{where}." if where else ""
        parts: dict[str, tuple[Any, ...]] = {}
        for kind in KINDS:
            key = kind + "s"
            items = data.get(key, [])
            if not isinstance(items, list):
                raise InvalidError(f"{at}{key} must be a list")
            seen: set[str] = set()
            out = []
            for i, item in enumerate(items):
                entity = entity_from_dict(kind, item, f"{at}{key}[{i}]")
                if entity.id in seen:
                    raise InvalidError(f"{at}{key}[{i}].id {entity.id!r} is used twice")
                seen.add(entity.id)
                out.append(entity)
            parts[key] = tuple(out)
        graph = cls(**parts)
        sources = {s.id for s in graph.sources}
        sinks = {s.id for s in graph.sinks}
        for i, route in enumerate(graph.routes):
            if route.spec.source_id not in sources:
                raise InvalidError(f"{at}routes[{i}].source_id {route.spec.source_id!r} "
                                   "is not a source")
            if route.spec.sink_id not in sinks:
                raise InvalidError(f"{at}routes[{i}].sink_id {route.spec.sink_id!r} "
                                   "is not a sink")
        return graph


def entity_to_dict(entity: Any) -> dict[str, Any]:
    return {"id": entity.id, "name": entity.name, **dataclasses.asdict(entity.spec)}


def entity_from_dict(kind: str, data: Any, where: str) -> Any:
    """A named entity from ``{"id": ..., "name": ..., <spec fields>}``."""
    if not isinstance(data, Mapping):
        raise InvalidError(f"{where} must be an object")
    fields = dict(data)
    if "id" not in fields:
        raise InvalidError(f"{where}.id is missing")
    entity_id = check_id(kind, fields.pop("id"), f"{where}.id")
    name = check_text(fields.pop("name", entity_id), f"{where}.name", max_len=100)
    if not name.strip():
        raise InvalidError(f"{where}.name must not be empty")
    spec_cls, entity_cls = KINDS[kind]
    return entity_cls(entity_id, name, build(spec_cls, fields, where))


# ---- checking ---------------------------------------------------------------------

def check_id(kind: str, value: Any, where: str | None = None) -> str:
    """An id usable in URLs: 1-64 letters, digits, '.', '_', '-', starting
    with a letter or digit (ids starting with '_' are the service's own)."""
    where = where or f"{kind} id"
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidError(f"{where} must be 1-64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    if kind == "sink" and value in RESERVED_IDS:
        raise InvalidError(f"{where}: {value!r} is reserved")
    return value


def check_text(value: Any, where: str, *, max_len: int = MAX_TEXT) -> str:
    """A string of printable text: no control characters, no lone
    surrogates (they cannot be written as UTF-8), at most ``max_len``."""
    if not isinstance(value, str):
        raise InvalidError(f"{where} must be a string")
    if len(value) > max_len:
        raise InvalidError(f"{where} must be at most {max_len} characters")
    if any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or 0xd800 <= ord(c) <= 0xdfff
           for c in value):
        raise InvalidError(f"{where} must not contain control characters or lone surrogates")
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _check_number(value: Any, where: str, ann: Any, meta: Mapping[str, Any]) -> Any:
    if ann is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidError(f"{where} must be an integer")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise InvalidError(f"{where} must be a finite number")
    else:
        value = float(value)
    if "range" in meta:
        lo, hi = meta["range"]
        if not lo <= value <= hi:
            raise InvalidError(f"{where} must be between {lo:g} and {hi:g}")
    if "choices" in meta and value not in meta["choices"]:
        raise InvalidError(f"{where} must be one of {', '.join(f'{c:g}' for c in meta['choices'])}")
    return value


def _check_value(value: Any, where: str, ann: Any, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(ann)
    if origin is Literal:
        choices = typing.get_args(ann)
        if not isinstance(value, str) or value not in choices:
            raise InvalidError(f"{where} must be one of {', '.join(choices)}")
        return value
    if origin in (types.UnionType, typing.Union):   # X | None
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(ann) if a is not type(None)]
        return _check_value(value, where, inner, meta)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) > 64:
            raise InvalidError(f"{where} must be a list of at most 64 strings")
        return tuple(check_text(v, f"{where}[{i}]", max_len=256) for i, v in enumerate(value))
    if ann is bool:
        if not isinstance(value, bool):
            raise InvalidError(f"{where} must be true or false")
        return value
    if ann in (int, float):
        return _check_number(value, where, ann, meta)
    if ann is str:
        if "id" in meta:
            return check_id(meta["id"], value, where)
        value = check_text(value, where, max_len=meta.get("max_len", MAX_TEXT))
        if "pattern" in meta and not meta["pattern"].fullmatch(value):
            raise InvalidError(f"{where} must be {meta['what']} (or empty)")
        return value
    raise InvalidError(f"{where} cannot be set here")


def build(cls: type, data: Any, where: str, *, skip: tuple[str, ...] = ()) -> Any:
    """Make the frozen dataclass ``cls`` from a mapping: every key must be a
    field (not one in ``skip``), every value of the field's type and range,
    every field without a default present."""
    if not isinstance(data, Mapping):
        raise InvalidError(f"{where} must be a table or object")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise InvalidError(f"unknown key {name!r}")
        kwargs[key] = _check_value(value, name, hints[key], fields[key].metadata)
        check = fields[key].metadata.get("check")
        if check is not None and (problem := check(kwargs[key])):
            raise InvalidError(f"{name} {problem}")
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            raise InvalidError(f"{where}.{name} is missing" if where else f"{name} is missing")
    value = cls(**kwargs)
    problem = value.problem() if hasattr(value, "problem") else None   # across fields
    if problem:
        raise InvalidError(f"{where}.{problem}" if where else problem)
    return value
