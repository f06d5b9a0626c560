"""The appliance's configuration: one typed, frozen object loaded from TOML.

    name = "Hall A"                 # shown in the web UI
    state_dir = "/var/lib/appliance"

    [server]
    host = "0.0.0.0"
    port = 8080
    token = ""                      # bearer token for WHEP and admin; "" = none
    ice_servers = ["stun:stun.example.net:3478"]
    max_listeners = 100

    [engine]                        # any EngineSettings field
    gather_timeout_ms = 2000

    [[sources]]
    id = "line_in"
    name = "Line in"
    kind = "alsa"                   # any SourceSpec field
    device = "hw:CARD=sndrpihifiberry"

    [[sinks]]
    id = "main"
    name = "Main"
    kind = "opus"                   # any SinkSpec field

    [[routes]]
    id = "line_in-main"
    source_id = "line_in"
    sink_id = "main"                # any RouteSpec field

A key the schema does not know is an error that names it. The sources, sinks
and routes seed the audio graph; see ``appliance.store`` for how they combine
with changes made through the admin API.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .engine import EngineSettings, RouteSpec, SinkSpec, SourceSpec

__all__ = ["Config", "ServerConfig", "IceServer", "SourceConfig", "SinkConfig",
           "RouteConfig", "ConfigError", "load_config", "parse_config", "default_config",
           "default_state_dir", "detect_sound_cards", "RESERVED_IDS", "check_id"]

# Words that cannot be sink ids because they are path segments of the API.
RESERVED_IDS = frozenset({"source", "route"})
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """The configuration is not valid; the message names the offending key."""


def check_id(kind: str, value: Any) -> str:
    """An id usable in URLs: letters, digits, '.', '_', '-', not starting with
    a punctuation mark (ids starting with '_' are the service's own)."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ConfigError(f"{kind} id {value!r} must be 1-64 letters, digits, '.', '_' "
                          "or '-', starting with a letter or digit")
    if kind == "sink" and value in RESERVED_IDS:
        raise ConfigError(f"sink id {value!r} is reserved")
    return value


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server given to clients (WHEP Link headers) and, for
    STUN, to the engine."""
    url: str
    username: str | None = None
    credential: str | None = None

    def link_header(self) -> str:
        value = f'<{self.url}>; rel="ice-server"'
        if self.username is not None:
            value += f'; username="{self.username}"'
        if self.credential is not None:
            value += f'; credential="{self.credential}"; credential-type="password"'
        return value


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    token: str = ""
    ice_servers: tuple[IceServer, ...] = ()
    max_listeners: int = 100
    max_body_bytes: int = 64 * 1024
    # a session ends when for this long neither a heartbeat nor any packet
    # (ICE consent, RTCP) came from its peer
    session_timeout_s: float = 15.0
    answer_timeout_s: float = 5.0
    # POST /api/whep/... per client address: a token bucket
    post_rate_per_s: float = 10.0
    post_burst: int = 30
    cors_origin: str = "*"
    shutdown_timeout_s: float = 10.0
    # opus settings of the temporary sinks made for listening to a source or route
    listen_frame_ms: float = 10.0
    listen_bitrate: int = 128000


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


# The appliance runs its audio threads at real-time priority where it may
# (the image's service unit allows it); elsewhere the engine quietly runs them
# at normal priority.
APP_REALTIME_PRIORITY = 20


def app_engine_settings(table: Any) -> EngineSettings:
    if isinstance(table, dict):
        table = {"realtime_priority": APP_REALTIME_PRIORITY, **table}
    engine, _ = _build(EngineSettings, table, "engine")  # _build reports a non-table
    return engine


@dataclass(frozen=True)
class Config:
    name: str = "Listening appliance"
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    server: ServerConfig = ServerConfig()
    engine: EngineSettings = field(default_factory=lambda: app_engine_settings({}))
    sources: tuple[SourceConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def default_state_dir() -> Path:
    """/var/lib/appliance when running as root (the image's service), else
    $XDG_STATE_HOME/appliance (~/.local/state/appliance)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/appliance")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "appliance"


def detect_sound_cards(path: str = "/proc/asound/cards") -> list[str]:
    """ALSA card ids ("sndrpihifiberry", ...) of the cards the kernel has."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    ids = []
    for line in text.splitlines():
        m = re.match(r"^\s*\d+\s+\[(\S+)\s*\]", line)
        if m:
            ids.append(m.group(1))
    return ids


def default_graph(cards: list[str] | None = None) -> tuple[tuple[SourceConfig, ...],
                                                              tuple[SinkConfig, ...],
                                                              tuple[RouteConfig, ...]]:
    """With a sound card: its capture routed to sink ``main``. Without one (a
    laptop, CI): a test tone routed to ``main``, so a listener hears something."""
    cards = detect_sound_cards() if cards is None else cards
    sink = SinkConfig("main", "Main", SinkSpec(kind="opus"))
    if cards:
        source = SourceConfig("line_in", "Line in", SourceSpec(
            kind="alsa", device=f"plughw:CARD={cards[0]}", allow_absent=True))
    else:
        source = SourceConfig("tone", "Test tone", SourceSpec(kind="tone"))
    route = RouteConfig(f"{source.id}-main", f"{source.name} to Main",
                        RouteSpec(source_id=source.id, sink_id="main"))
    return (source,), (sink,), (route,)


def default_config(cards: list[str] | None = None) -> Config:
    sources, sinks, routes = default_graph(cards)
    return Config(sources=sources, sinks=sinks, routes=routes)


# ---- parsing -----------------------------------------------------------------

def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(where: str, value: Any, annotation: str) -> Any:
    """Check a TOML value against a dataclass field's (string) annotation."""
    ann = annotation.replace(" ", "")
    if ann.startswith("tuple[str"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings")
        return tuple(value)
    if ann in ("bool",):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if ann in ("int",):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer")
        return value
    if ann in ("float",):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number")
        return float(value)
    if ann in ("str",) or ann.startswith("Literal["):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        if ann.startswith("Literal["):
            allowed = re.findall(r"'([^']*)'|\"([^\"]*)\"", ann)
            choices = [a or b for a, b in allowed]
            if value not in choices:
                raise ConfigError(f"{where} must be one of {', '.join(choices)}")
        return value
    if ann in ("str|None",):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value
    raise ConfigError(f"{where}: cannot be set from the config file")


def _build(cls: type, table: Any, where: str, *, skip: tuple[str, ...] = (),
           extra: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """Make ``cls`` from a TOML table; unknown keys are an error. Keys in
    ``extra`` are returned separately instead of being passed to ``cls``."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    known = {k: f for k, f in _fields(cls).items() if k not in skip}
    kwargs: dict[str, Any] = {}
    others: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{where}.{key}" if where else key
        if key in extra:
            others[key] = value
        elif key not in known:
            raise ConfigError(f"unknown config key {name!r}")
        else:
            kwargs[key] = _coerce(name, value, str(known[key].type))
    try:
        return cls(**kwargs), others
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{where}: {error}") from None


def _ice_servers(value: Any, where: str) -> tuple[IceServer, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list")
    out = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        if isinstance(item, str):
            server = IceServer(item)
        else:
            server, _ = _build(IceServer, item, here)
        if not re.match(r"^(stun|stuns|turn|turns):", server.url):
            raise ConfigError(f"{here} must be a stun:, stuns:, turn: or turns: URL")
        out.append(server)
    return tuple(out)


def _entities(value: Any, where: str, spec_cls: type, make: type) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be an array of tables ([[{where}]])")
    out = []
    seen = set()
    kind = where.rstrip("s")
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        spec, others = _build(spec_cls, item, here, extra=("id", "name"))
        if "id" not in others:
            raise ConfigError(f"{here}.id is missing")
        try:
            entity_id = check_id(kind, others["id"])
        except ConfigError as error:
            raise ConfigError(f"{here}.id: {error}") from None
        if entity_id in seen:
            raise ConfigError(f"{here}.id {entity_id!r} is used twice")
        seen.add(entity_id)
        name = others.get("name", entity_id)
        if not isinstance(name, str):
            raise ConfigError(f"{here}.name must be a string")
        out.append(make(entity_id, name, spec))
    return tuple(out)


def parse_config(data: Mapping[str, Any], *, cards: list[str] | None = None) -> Config:
    """Make a Config from parsed TOML. Without any sources, sinks and routes
    the default graph is used (see ``default_graph``)."""
    known = {"name", "state_dir", "server", "engine", "sources", "sinks", "routes"}
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}")
    kwargs: dict[str, Any] = {}
    if "name" in data:
        kwargs["name"] = _coerce("name", data["name"], "str")
    if "state_dir" in data:
        kwargs["state_dir"] = Path(_coerce("state_dir", data["state_dir"], "str")).expanduser()
    server_table = dict(data.get("server", {})) if isinstance(data.get("server", {}), Mapping) \
        else data["server"]
    ice = ()
    if isinstance(server_table, dict) and "ice_servers" in server_table:
        ice = _ice_servers(server_table.pop("ice_servers"), "server.ice_servers")
    server, _ = _build(ServerConfig, server_table, "server", skip=("ice_servers",))
    server = dataclasses.replace(server, ice_servers=ice)
    if not 0 <= server.port <= 65535:
        raise ConfigError("server.port must be 0..65535")
    for name in ("max_listeners", "max_body_bytes", "post_burst"):
        if getattr(server, name) <= 0:
            raise ConfigError(f"server.{name} must be positive")
    for name in ("session_timeout_s", "answer_timeout_s", "post_rate_per_s",
                 "shutdown_timeout_s"):
        if not getattr(server, name) > 0:
            raise ConfigError(f"server.{name} must be positive")
    kwargs["server"] = server
    engine = app_engine_settings(data.get("engine", {}))
    if engine.stun_server is None:
        stun = next((s.url for s in ice if s.url.startswith("stun:")), None)
        if stun:
            engine = dataclasses.replace(engine, stun_server="stun://" + stun[len("stun:"):])
    kwargs["engine"] = engine
    sources = _entities(data.get("sources", []), "sources", SourceSpec, SourceConfig)
    sinks = _entities(data.get("sinks", []), "sinks", SinkSpec, SinkConfig)
    routes = _entities(data.get("routes", []), "routes", RouteSpec, RouteConfig)
    if not (sources or sinks or routes):
        sources, sinks, routes = default_graph(cards)
    source_ids = {s.id for s in sources}
    sink_ids = {s.id for s in sinks}
    for i, route in enumerate(routes):
        if route.spec.source_id not in source_ids:
            raise ConfigError(f"routes[{i}].source_id {route.spec.source_id!r} is not a source")
        if route.spec.sink_id not in sink_ids:
            raise ConfigError(f"routes[{i}].sink_id {route.spec.sink_id!r} is not a sink")
    kwargs.update(sources=sources, sinks=sinks, routes=routes)
    return Config(**kwargs)


def load_config(path: str | os.PathLike | None = None, *,
                cards: list[str] | None = None) -> Config:
    """Read a TOML config file; ``None`` gives the defaults."""
    if path is None:
        return parse_config({}, cards=cards)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    return parse_config(data, cards=cards)
