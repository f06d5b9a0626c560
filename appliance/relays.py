"""Relays: Janus servers that carry channels to more listeners than the box
holds. Audio never passes through Python: the engine forwards each channel's
Opus (the listeners' encode) as RTP to a Janus streaming mountpoint; this
module only talks to Janus's HTTP API.

    Relays.start(id, spec)
      service nursery
        relay task (one per relay)                runs until it is removed
          attempt: session, attach janus.plugin.streaming
                   per channel: destroy (a stale one of ours), create an RTP
                   mountpoint (Janus picks the port), engine.start_forward
                   every HEALTH_S: keepalive, info per mountpoint (viewers)
                   until a request fails or a mountpoint is gone (a restart)
                   forwards closed, mountpoints destroyed   shielded, bounded
          backoff: 1, 2, 4 ... 30 s, then again

A mountpoint's id is derived from the box's name, the relay and the channel,
so a box that restarts replaces its own mountpoints instead of leaving them
behind. SRTP (AES_CM_128_HMAC_SHA1_80, a fresh key per mountpoint) is used
when the relay's address is not on the LAN. A relay that hangs, answers
garbage or redirects costs a bounded wait per request and is retried; it
never touches the box's own listeners.

Listeners come to a relay through the listen page, which asks the box where
to play (``Relays.take_listener``: the least loaded relay that is up and
open to listeners, i.e. has no api_secret); a failed request marks the
relay unhealthy at once, so none is sent to a dead one for long.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
from functools import partial
import os
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from .engine import Engine, EngineError, Listener
from .model import RelaySpec, sent_privately
from . import outbound
from .outbound import AttemptFailed, BodyTooLong, read_body

__all__ = ["Relay", "Relays", "RelayError"]

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 5.0
HEALTH_S = 2.0                  # keepalive and viewers this often
MAX_REPLY_BYTES = 64 * 1024
MAX_SHOWN = 300
OPUS_PT = 111


class RelayError(AttemptFailed):
    """Why an attempt ended (plain text for the admin page)."""


@dataclass
class Carried:
    """One channel on a relay: its mountpoint and the engine's forward."""
    sink_id: str
    mountpoint: int
    port: int | None = None
    srtp: bool = False
    viewers: int | None = None
    # listeners sent here since Janus last counted them (a burst between two
    # counts spreads over the relays instead of piling onto one)
    sent: int = 0
    forward: Listener | None = None
    packets_sent: int = 0

    @property
    def load(self) -> int:
        return (self.viewers or 0) + self.sent

    def status(self) -> dict[str, Any]:
        return {"sink_id": self.sink_id, "mountpoint": self.mountpoint, "port": self.port,
                "srtp": self.srtp, "viewers": self.viewers, "packets_sent": self.packets_sent}


@dataclass(eq=False)
class Relay:
    id: str
    spec: RelaySpec
    in_config: bool = False          # a [[relays]] table: not removed through the API
    state: str = "starting"          # starting, connecting, up, unhealthy, stopped
    attempts: int = 0
    error: str | None = None         # the last attempt's failure
    up_since: float | None = None
    carried: dict[str, Carried] = field(default_factory=dict)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    # set on every health round (tests wait on it instead of sleeping)
    checked: trio.Event = field(default_factory=trio.Event)

    def status(self) -> dict[str, Any]:
        carried = [c.status() for c in self.carried.values()]
        return {"id": self.id, "url": self.spec.url, "channels": list(self.spec.channels),
                "listen_url": self.spec.listen_url or None, "srtp": self.spec.srtp,
                "in_config": self.in_config,
                # false: Janus's api_secret closes its API to listeners' browsers
                "for_listeners": self.spec.for_listeners,
                "state": self.state, "attempts": self.attempts, "error": self.error,
                "up_s": None if self.up_since is None
                else round(time.monotonic() - self.up_since, 1),
                "carried": carried,
                "viewers": sum(c["viewers"] or 0 for c in carried)}


def mountpoint_id(box: str, relay_id: str, sink_id: str) -> int:
    """The same for the same box, relay and channel; below 2**53 (JavaScript
    clients of Janus read ids as doubles)."""
    digest = hashlib.sha256(f"{box}\0{relay_id}\0{sink_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**53 - 1) + 1


def on_lan(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or ip.is_private or ip.is_link_local


class JanusApi:
    """Janus's HTTP API, every request bounded: a session with a handle on
    the streaming plugin."""

    def __init__(self, http: httpx.AsyncClient, spec: RelaySpec):
        self.http = http
        self.spec = spec
        self.base = spec.url.rstrip("/")
        self.session: int | None = None
        self.handle: int | None = None

    async def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": secrets.token_hex(8)}
        if self.spec.api_secret:
            body["apisecret"] = self.spec.api_secret
        with trio.move_on_after(HTTP_TIMEOUT_S) as waiting:
            async with self.http.stream("POST", self.base + path, json=body) as response:
                try:
                    raw = await read_body(response, MAX_REPLY_BYTES, HTTP_TIMEOUT_S)
                except BodyTooLong:
                    raise RelayError(f"the relay's reply is over {MAX_REPLY_BYTES // 1024} KB "
                                     "or never ends") from None
        if waiting.cancelled_caught:
            raise RelayError(f"the relay did not answer in {HTTP_TIMEOUT_S:g} s")
        text = raw.decode("utf-8", "replace")
        if response.status_code != httpx.codes.OK:
            shown = text[:MAX_SHOWN].strip()
            raise RelayError(f"the relay answered {response.status_code}" +
                             (f": {shown}" if shown else ""))
        try:
            reply = json.loads(text)
        except ValueError:
            raise RelayError(f"the relay's reply is not JSON: {text[:80]!r}") from None
        if not isinstance(reply, dict):
            raise RelayError("the relay's reply is not a JSON object")
        if reply.get("janus") == "error":
            error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
            raise RelayError(f"Janus refused {body.get('janus')}: "
                             f"{str(error.get('reason', '?'))[:MAX_SHOWN]}")
        if reply.get("janus") not in ("success", "ack"):
            raise RelayError(f"not a Janus reply: {text[:80]!r}")
        return reply

    async def connect(self) -> None:
        self.session = _int(await self.request("", {"janus": "create"}), "data", "id")
        self.handle = _int(await self.request(f"/{self.session}", {
            "janus": "attach", "plugin": "janus.plugin.streaming"}), "data", "id")

    async def keepalive(self) -> None:
        await self.request(f"/{self.session}", {"janus": "keepalive"})

    async def streaming(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous streaming-plugin request: its data (an error of the
        plugin's as RelayError, with its code)."""
        if self.spec.admin_key and body.get("request") in ("create", "destroy"):
            body = {**body, "admin_key": self.spec.admin_key}
        reply = await self.request(f"/{self.session}/{self.handle}",
                                   {"janus": "message", "body": body})
        data = reply.get("plugindata", {}).get("data") \
            if isinstance(reply.get("plugindata"), dict) else None
        if not isinstance(data, dict):
            raise RelayError("the relay's streaming plugin sent no data")
        if "error_code" in data:
            error = RelayError(f"Janus's streaming plugin refused {body.get('request')}: "
                               f"{str(data.get('error', '?'))[:MAX_SHOWN]}")
            error.code = data["error_code"]   # type: ignore[attr-defined]
            raise error
        return data

    async def close(self) -> None:
        if self.session is not None:
            await self.request(f"/{self.session}", {"janus": "destroy"})


def _int(reply: dict[str, Any], *path: str) -> int:
    value: Any = reply
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RelayError(f"the relay's reply has no {'.'.join(path)}")
    return value


NO_SUCH_MOUNTPOINT = 455


class Relays:
    """The relays of one service, by id."""

    def __init__(self, engine: Engine, nursery: trio.Nursery, box_name: str):
        self.engine = engine
        self._nursery = nursery
        self.box_name = box_name
        self.by_id: dict[str, Relay] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def start(self, relay_id: str, spec: RelaySpec, *, in_config: bool = False) -> Relay:
        relay = Relay(relay_id, spec, in_config)
        self.by_id[relay_id] = relay
        self._nursery.start_soon(self._run, relay)
        return relay

    async def stop(self, relay_id: str) -> None:
        """End a relay (its mountpoints destroyed) and wait for it."""
        relay = self.by_id.pop(relay_id)
        relay.cancel_scope.cancel()
        with trio.move_on_after(3 * HTTP_TIMEOUT_S + 5):
            await relay.done.wait()

    async def aclose(self) -> None:
        for relay_id in list(self.by_id):
            await self.stop(relay_id)

    def status(self) -> list[dict[str, Any]]:
        return [r.status() for r in self.by_id.values()]

    def carrying(self, sink_id: str) -> bool:
        return any(sink_id in r.spec.channels for r in self.by_id.values())

    def take_listener(self, sink_id: str, avoid: str | None = None
                      ) -> tuple[Relay, Carried] | None:
        """The healthy relay, open to listeners, that carries ``sink_id``
        with the fewest viewers (not ``avoid``: the one a listener just lost),
        counted as one listener more; None when there is none."""
        candidates = [(relay, relay.carried[sink_id]) for relay in self.by_id.values()
                      if relay.state == "up" and relay.spec.for_listeners
                      and relay.id != avoid and sink_id in relay.carried]
        if not candidates:
            return None
        relay, carried = min(candidates, key=lambda pair: pair[1].load)
        carried.sent += 1
        return relay, carried

    # ---- one relay ------------------------------------------------------------------

    async def _run(self, relay: Relay) -> None:
        try:
            with relay.cancel_scope:
                async with outbound.client(relay.spec.tls_ca, HTTP_TIMEOUT_S) as http:
                    api = JanusApi(http, relay.spec)
                    await outbound.keep_trying(
                        partial(self._attempt, relay, api), name=f"relay {relay.id}",
                        peer="relay", up_since=lambda: relay.up_since,
                        failed=partial(self._failed, relay))
        finally:
            relay.state = "stopped"
            relay.done.set()

    def _failed(self, relay: Relay, why: str) -> None:
        relay.error, relay.up_since, relay.state = why, None, "unhealthy"
        self._checked(relay)

    async def _attempt(self, relay: Relay, api: JanusApi) -> None:
        relay.attempts += 1
        relay.state = "connecting"
        host = urlsplit(relay.spec.url).hostname or ""
        try:
            address = await self._resolve(host)
            srtp = relay.spec.srtp == "on" or (relay.spec.srtp == "auto" and not on_lan(address))
            if srtp and not sent_privately(relay.spec.url):
                # the key goes in the mountpoint request: beside the RTP it
                # protects, a capture of plain HTTP would have both
                raise RelayError("SRTP's key would cross the network in the clear: "
                                 "reach this relay over https://")
            await api.connect()
            for sink_id in relay.spec.channels:
                relay.carried[sink_id] = await self._carry(relay, api, sink_id, address, srtp)
            relay.state, relay.error = "up", None
            relay.up_since = time.monotonic()
            while True:
                await self._check(relay, api)
                self._checked(relay)
                await trio.sleep(HEALTH_S)
        finally:
            with trio.CancelScope(shield=True):
                await self._release(relay, api)

    @staticmethod
    def _checked(relay: Relay) -> None:
        relay.checked.set()
        relay.checked = trio.Event()

    @staticmethod
    async def _resolve(host: str) -> str:
        """The relay's address, where its mountpoints take RTP."""
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        with trio.move_on_after(HTTP_TIMEOUT_S):
            try:
                infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_DGRAM)
            except OSError as error:
                raise RelayError(f"cannot resolve {host!r}: {error}") from None
            if infos:
                return str(infos[0][4][0])
        raise RelayError(f"cannot resolve {host!r}")

    async def _carry(self, relay: Relay, api: JanusApi, sink_id: str, address: str,
                     srtp: bool) -> Carried:
        """One channel's mountpoint (a stale one of ours replaced) and the
        engine's forward to it."""
        carried = Carried(sink_id, mountpoint_id(self.box_name, relay.id, sink_id), srtp=srtp)
        try:
            await api.streaming({"request": "destroy", "id": carried.mountpoint})
        except RelayError as error:
            if getattr(error, "code", None) != NO_SUCH_MOUNTPOINT:
                raise
        key = os.urandom(30) if srtp else None
        audio: dict[str, Any] = {"type": "audio", "mid": "a", "codec": "opus", "pt": OPUS_PT,
                                 "rtpmap": "opus/48000/2", "port": 0}
        sink = self.engine.sinks().get(sink_id)
        if sink is not None and sink.channels == 2:
            # in Janus's offer: without it browsers decode Opus as mono
            audio["fmtp"] = "stereo=1; sprop-stereo=1"
        create: dict[str, Any] = {
            "request": "create", "type": "rtp", "id": carried.mountpoint,
            "description": f"{self.box_name}: {sink_id}"[:128], "media": [audio]}
        if key is not None:
            create["srtpsuite"] = 80
            create["srtpcrypto"] = base64.b64encode(key).decode()
        data = await api.streaming(create)
        ports = data.get("stream", {}).get("ports") if isinstance(data.get("stream"), dict) \
            else None
        port = ports[0].get("port") if isinstance(ports, list) and ports \
            and isinstance(ports[0], dict) else None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise RelayError("the relay created a mountpoint but named no port for it")
        carried.port = port
        try:
            carried.forward = self.engine.start_forward(
                sink_id, address, port, payload_type=OPUS_PT,
                ssrc=secrets.randbits(32), srtp_key=key)
        except EngineError as error:
            raise RelayError(f"channel {sink_id!r} cannot be forwarded: {error.message}") \
                from None
        return carried

    async def _check(self, relay: Relay, api: JanusApi) -> None:
        """Keepalive, then each mountpoint's viewers; a mountpoint that is
        gone means the relay restarted (or someone removed it): start over."""
        await api.keepalive()
        for carried in relay.carried.values():
            data = await api.streaming({"request": "info", "id": carried.mountpoint})
            info = data.get("info") if isinstance(data.get("info"), dict) else {}
            viewers = info.get("viewers")
            carried.viewers = viewers if isinstance(viewers, int) \
                and not isinstance(viewers, bool) else None
            carried.sent = 0
            if carried.forward is not None:
                carried.packets_sent = carried.forward.stats().packets_sent

    @staticmethod
    async def _release(relay: Relay, api: JanusApi) -> None:
        """Forwards closed at once; mountpoints and the session removed if
        the relay answers within a few seconds (Janus times a session out
        anyway; a mountpoint stays until replaced)."""
        carried, relay.carried = list(relay.carried.values()), {}
        for c in carried:
            if c.forward is not None:
                await c.forward.aclose()
        if api.session is None:
            return
        with trio.move_on_after(3):
            try:
                for c in carried:
                    await api.streaming({"request": "destroy", "id": c.mountpoint})
                await api.close()
            except (RelayError, httpx.HTTPError, OSError, ssl.SSLError):
                pass
