"""The appliance's configuration: one typed, frozen object loaded from TOML.

    name = "Hall A"                 # shown in the web UI
    state_dir = "/var/lib/appliance"

    [server]
    host = "0.0.0.0"
    port = 8080
    https_port = 8443               # the admin side over HTTPS (listening on both)
    listen_pin = ""                 # a PIN that grants listening only; "" = open
    ice_servers = ["stun:stun.example.net:3478"]
    max_listeners = 100

    [admin]
    token = ""                      # bearer token for scripts; "" = none
    metrics_token = ""              # bearer for GET /metrics only; "" = none
    password_hash = "scrypt$..."    # appliance.passwords; "" = set up with a one-time code

    [update]                        # updates from the admin page (appliance.update)
    max_bundle_bytes = 2147483648   # an upload past this is refused as it streams in
    free_margin_bytes = 67108864    # ... and one that would leave less free on the state partition

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

    [[publications]]                # any PublicationSpec field, plus id
    id = "to-b"
    sink_id = "main"
    url = "https://b.local:8443/api/whip/from_a"

    [[relays]]                      # any RelaySpec field, plus id
    id = "janus1"
    url = "http://10.0.0.5:8088/janus"
    channels = ["main"]

A key the schema does not know is an error that names it; every value is
checked by ``appliance.model`` (the same checks as the saved state and the
admin API). The sources, sinks and routes seed the audio graph; see
``appliance.store`` for how they combine with changes made through the admin
API. Publications and relays are different: the config's are fixed (started
with the box, shown with ``"in_config": true``, not removable through the
API), beside those the admin API adds and saves. Nothing here imports the
engine: ``appliance check-config`` works without the C build.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .devices import parse_cards
from .errors import InvalidError
from .passwords import is_password_hash
from .model import (
    EngineSettings, Graph, PublicationSpec, RelaySpec, RouteConfig, RouteSpec, SinkConfig,
    SinkSpec, SourceConfig, SourceSpec, build, check_id, check_text,
)

__all__ = ["Config", "ServerConfig", "AdminConfig", "UpdateConfig", "IceServer", "ConfigError", "load_config",
           "PublicationConfig", "RelayConfig",
           "parse_config", "default_config", "default_state_dir", "detect_sound_cards", "prepare_dirs"]


class ConfigError(InvalidError):
    """The configuration is not valid; the message names the offending key."""


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server given to clients (WHEP Link headers) and, for
    STUN, to the engine."""
    url: str = field(metadata={"max_len": 256})
    username: str | None = field(default=None, metadata={"max_len": 256})
    credential: str | None = field(default=None, metadata={"max_len": 256})

    def link_header(self) -> str:
        value = f'<{self.url}>; rel="ice-server"'
        if self.username is not None:
            value += f'; username="{self.username}"'
        if self.credential is not None:
            value += f'; credential="{self.credential}"; credential-type="password"'
        return value


def _r(lo: float, hi: float) -> dict[str, Any]:
    return {"range": (lo, hi)}


@dataclass(frozen=True)
class ServerConfig:
    host: str = field(default="0.0.0.0", metadata={"max_len": 255})
    port: int = field(default=8080, metadata=_r(0, 65535))
    # a PIN that grants listening only (WHEP); "" = anyone on the network may listen
    listen_pin: str = field(default="", metadata={"max_len": 64})
    ice_servers: tuple[IceServer, ...] = ()
    max_listeners: int = field(default=100, metadata=_r(1, 100000))
    max_body_bytes: int = field(default=64 * 1024, metadata=_r(1024, 16 << 20))
    # a session ends when for this long neither a heartbeat nor any packet
    # (ICE consent, RTCP) came from its peer
    session_timeout_s: float = field(default=15.0, metadata=_r(1, 3600))
    answer_timeout_s: float = field(default=5.0, metadata=_r(0.1, 60))
    # a session whose peer has not connected (DTLS done) this long after its
    # answer gives its slot back; a browser on a LAN takes well under a second
    connect_timeout_s: float = field(default=10.0, metadata=_r(0.5, 300))
    # sessions still connecting per client address (IPv6: per /64): one
    # client cannot hold the slots with offers it never connects
    max_connecting_per_client: int = field(default=4, metadata=_r(1, 1000))
    # live-event streams (the admin and listen pages' feeds) in all and per
    # client address (IPv6: per /64); past them 503 / 429
    max_event_streams: int = field(default=256, metadata=_r(1, 100000))
    max_event_streams_per_client: int = field(default=4, metadata=_r(1, 1000))
    # POST /api/whep/... per client address: a token bucket
    post_rate_per_s: float = field(default=10.0, metadata=_r(0.01, 100000))
    post_burst: int = field(default=30, metadata=_r(1, 100000))
    cors_origin: str = field(default="*", metadata={"max_len": 255})
    # the hotspot's captive portal: a request for another host is sent here
    # (e.g. "http://10.42.0.1/"); "" = off (first boot sets it in hotspot mode)
    captive_redirect: str = field(default="", metadata={"max_len": 255})
    shutdown_timeout_s: float = field(default=10.0, metadata=_r(0.1, 300))
    # the admin page, its login and the admin API are served over HTTPS on
    # this port (listening works on both); 0 = any free port
    https_port: int = field(default=8443, metadata=_r(0, 65535))
    # the venue's own certificate and key (PEM); "" = made at first start in
    # <state_dir>/tls (self-signed ECDSA P-256, appliance.tls)
    certfile: str = field(default="", metadata={"max_len": 1024})
    keyfile: str = field(default="", metadata={"max_len": 1024})
    # the hotspot's network and passphrase: /signs prints a Wi-Fi join QR
    # code beside each listen code when both are set (first boot sets them)
    wifi_ssid: str = field(default="", metadata={"max_len": 32})
    wifi_passphrase: str = field(default="", metadata={"max_len": 64})
    # opus settings of the temporary sinks made for listening to a source or route
    listen_frame_ms: float = field(default=10.0, metadata={"choices": (2.5, 5.0, 10.0, 20.0,
                                                                       40.0, 60.0)})
    listen_bitrate: int = field(default=128000, metadata=_r(6000, 510000))
    # SAP (RFC 2974): streams announced on the LAN, listed on the admin page;
    # 0 = not listened for. The groups are joined on sap_interface ("" = as
    # routing says)
    sap_port: int = field(default=9875, metadata=_r(0, 65535))
    sap_interface: str = field(default="", metadata={
        "max_len": 15, "pattern": re.compile(r"[A-Za-z0-9_.:@-]*"),
        "what": "a network interface's name"})


@dataclass(frozen=True)
class AdminConfig:
    """Who may change things. The admin page logs in with the password;
    scripts send ``Authorization: Bearer <token>``."""
    # "" = no bearer token (scripts cannot change anything)
    token: str = field(default="", metadata={"secret": True, "max_len": 256})
    # appliance.passwords hash; "" = set with a one-time setup code
    password_hash: str = field(default="", metadata={"secret": True, "max_len": 512})
    # where that code is written; "" = <state_dir>/setup-code.txt
    setup_code_file: str = field(default="", metadata={"max_len": 1024})
    # a bearer for GET /metrics alone (a monitoring scraper); "" = only the
    # admin's credentials read it. Long enough that it needs no guess budget.
    metrics_token: str = field(default="", metadata={"secret": True,
        "max_len": 256, "pattern": re.compile(r"(?:[!-~]{20,})?"),
        "what": "at least 20 visible ASCII characters"})


@dataclass(frozen=True)
class UpdateConfig:
    """Update bundles uploaded to the admin page (appliance.update). The
    bundle is written to the state partition before RAUC reads it: an
    upload is refused as soon as it passes either bound."""
    # the largest bundle taken (a root slot's image, compressed)
    max_bundle_bytes: int = field(default=2 << 30, metadata=_r(1 << 20, 64 << 30))
    # what an upload must leave free on the state partition (the state
    # itself is written there too)
    free_margin_bytes: int = field(default=64 << 20, metadata=_r(0, 16 << 30))


@dataclass(frozen=True)
class PublicationConfig:
    """A ``[[publications]]`` table: fixed while the config says so."""
    id: str
    spec: PublicationSpec


@dataclass(frozen=True)
class RelayConfig:
    """A ``[[relays]]`` table: fixed while the config says so."""
    id: str
    spec: RelaySpec


# The appliance runs its audio threads at real-time priority where it may
# (the image's service unit allows it); elsewhere the engine quietly runs them
# at normal priority. Its lean listeners share one well-known UDP port (a
# firewall rule can name it); the engine alone would take any free port.
APP_REALTIME_PRIORITY = 20
APP_LEAN_PORT = 8443


def app_engine_settings(table: Any = None) -> EngineSettings:
    table = {} if table is None else table
    if isinstance(table, Mapping):
        table = {"realtime_priority": APP_REALTIME_PRIORITY, "lean_port": APP_LEAN_PORT, **table}
    return build(EngineSettings, table, "engine")


@dataclass(frozen=True)
class Config:
    name: str = "Listening appliance"
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    # file sources play only files in here; None = <state_dir>/media
    media_dir: Path | None = None
    # where the board's health is read (appliance.board): "/" on the box
    board_root: Path = Path("/")
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    update: UpdateConfig = UpdateConfig()
    engine: EngineSettings = field(default_factory=app_engine_settings)
    sources: tuple[SourceConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    publications: tuple[PublicationConfig, ...] = ()
    relays: tuple[RelayConfig, ...] = ()

    @property
    def media_folder(self) -> Path:
        return self.media_dir if self.media_dir is not None else self.state_dir / "media"

    @property
    def graph(self) -> Graph:
        """The graph the config seeds."""
        return Graph(self.sources, self.sinks, self.routes)

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
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [card_id for _, (card_id, _) in sorted(parse_cards(text).items())]


def default_graph(cards: list[str] | None = None) -> Graph:
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
    return Graph((source,), (sink,), (route,))


def default_config(cards: list[str] | None = None) -> Config:
    return parse_config({}, cards=cards)


# ---- parsing -----------------------------------------------------------------

def _ice_servers(value: Any, where: str) -> tuple[IceServer, ...]:
    if not isinstance(value, list) or len(value) > 16:
        raise ConfigError(f"{where} must be a list of at most 16 servers")
    out = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        server = build(IceServer, {"url": item} if isinstance(item, str) else item, here)
        if not re.match(r"^(stun|stuns|turn|turns):[^\s<>\"]+$", server.url):
            raise ConfigError(f"{here} must be a stun:, stuns:, turn: or turns: URL")
        for key in ("username", "credential"):
            if '"' in (getattr(server, key) or ""):
                raise ConfigError(f"{here}.{key} must not contain '\"'")
        out.append(server)
    return tuple(out)


def _path(value: Any, where: str) -> Path:
    return Path(check_text(value, where, max_len=1024)).expanduser()


def parse_config(data: Mapping[str, Any], *, cards: list[str] | None = None) -> Config:
    """Make a Config from parsed TOML. Without any sources, sinks and routes
    the default graph is used (see ``default_graph``)."""
    try:
        return _parse(data, cards)
    except ConfigError:
        raise
    except InvalidError as error:
        raise ConfigError(error.message) from None


def _parse(data: Mapping[str, Any], cards: list[str] | None) -> Config:
    known = {"name", "state_dir", "media_dir", "board_root", "server", "admin", "update", "engine",
             "sources", "sinks", "routes", "publications", "relays"}
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}")
    kwargs: dict[str, Any] = {}
    if "name" in data:
        kwargs["name"] = check_text(data["name"], "name", max_len=100)
    if "state_dir" in data:
        kwargs["state_dir"] = _path(data["state_dir"], "state_dir")
    if "media_dir" in data:
        kwargs["media_dir"] = _path(data["media_dir"], "media_dir")
    if "board_root" in data:
        kwargs["board_root"] = _path(data["board_root"], "board_root")
    server_table = data.get("server", {})
    ice: tuple[IceServer, ...] = ()
    if isinstance(server_table, Mapping) and "ice_servers" in server_table:
        ice = _ice_servers(server_table["ice_servers"], "server.ice_servers")
        server_table = {k: v for k, v in server_table.items() if k != "ice_servers"}
    server = build(ServerConfig, server_table, "server", skip=("ice_servers",))
    if server.captive_redirect and not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+/[^\s]*",
                                                    server.captive_redirect):
        raise ConfigError("server.captive_redirect must be an http:// URL such as "
                          "\"http://10.42.0.1/\"")
    if bool(server.certfile) != bool(server.keyfile):
        raise ConfigError("server.certfile and server.keyfile go together: set both or neither")
    if server.port and server.port == server.https_port:
        raise ConfigError("server.https_port must differ from server.port")
    if len(server.wifi_ssid.encode()) > 32:
        raise ConfigError("server.wifi_ssid is longer than 32 bytes")
    if server.wifi_passphrase and not re.fullmatch(r"[ -~]{8,63}|[0-9a-fA-F]{64}",
                                                   server.wifi_passphrase):
        raise ConfigError("server.wifi_passphrase must be 8-63 printable ASCII characters "
                          "(or 64 hex digits)")
    kwargs["server"] = dataclasses.replace(server, ice_servers=ice)
    admin = build(AdminConfig, data.get("admin", {}), "admin")
    if admin.password_hash and not is_password_hash(admin.password_hash):
        # every login would fail, and nothing would say why
        raise ConfigError("admin.password_hash is not a password hash (scrypt$...): write the "
                          "hash flash.sh --admin-password makes, or leave it empty and set the "
                          "password with the setup code")
    kwargs["admin"] = admin
    kwargs["update"] = build(UpdateConfig, data.get("update", {}), "update")
    engine = app_engine_settings(data.get("engine", {}))
    if engine.stun_server is None:
        stun = next((s.url for s in ice if s.url.startswith("stun:")), None)
        if stun:
            engine = dataclasses.replace(engine, stun_server="stun://" + stun[len("stun:"):])
    kwargs["engine"] = engine
    graph = Graph.from_json({key: data[key] for key in ("sources", "sinks", "routes")
                             if key in data}, where="")
    if not (graph.sources or graph.sinks or graph.routes):
        graph = default_graph(cards)
    kwargs.update(sources=graph.sources, sinks=graph.sinks, routes=graph.routes)
    channels = {sink.id for sink in graph.sinks if sink.spec.kind == "opus"}
    publications = _outbound(data.get("publications", []), "publications", PublicationConfig,
                             PublicationSpec)
    relays = _outbound(data.get("relays", []), "relays", RelayConfig, RelaySpec)
    for i, publication in enumerate(publications):
        _check_channels(f"publications[{i}].sink_id", (publication.spec.sink_id,), channels)
    for i, relay in enumerate(relays):
        _check_channels(f"relays[{i}].channels", relay.spec.channels, channels)
    return Config(**kwargs, publications=publications, relays=relays)


def _outbound(items: Any, key: str, entry: type, spec: type) -> tuple[Any, ...]:
    """``[[publications]]`` or ``[[relays]]``: each an id plus the spec's
    fields, checked as the admin API checks them; ids unique."""
    if not isinstance(items, list):
        raise ConfigError(f"{key} must be a list of tables ([[{key}]])")
    out, seen = [], set()
    for i, item in enumerate(items):
        here = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{here} must be a table")
        fields = dict(item)
        if "id" not in fields:
            raise ConfigError(f"{here}.id is missing")
        ident = check_id(key[:-1], fields.pop("id"), f"{here}.id")
        if ident in seen:
            raise ConfigError(f"{here}.id {ident!r} is used twice")
        seen.add(ident)
        out.append(entry(ident, build(spec, fields, here)))
    return tuple(out)


def _check_channels(where: str, sink_ids: tuple[str, ...], channels: set[str]) -> None:
    """A config's publication or relay names channels of the config's own
    graph (an API-made channel may be gone by the next start)."""
    for sink_id in sink_ids:
        if sink_id not in channels:
            raise ConfigError(f"{where}: {sink_id!r} is not a channel of this config "
                              "(a [[sinks]] table with kind = \"opus\")")


def prepare_dirs(config: Config) -> None:
    """Make the state and media folders; a ConfigError says plainly why one
    cannot be used (a file in the way, no permission)."""
    for key, folder in (("state_dir", config.state_dir), ("media_dir", config.media_folder)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"{key} {str(folder)!r} is not a directory") from None
        except OSError as error:
            raise ConfigError(f"{key} {str(folder)!r} cannot be made: {error.strerror}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{key} {str(folder)!r} is not writable")


def load_config(path: str | os.PathLike | None = None, *,
                cards: list[str] | None = None) -> Config:
    """Read a TOML config file; ``None`` gives the defaults."""
    if path is None:
        return parse_config({}, cards=cards)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except IsADirectoryError:
        raise ConfigError(f"cannot read {path}: it is a directory") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    return parse_config(data, cards=cards)
