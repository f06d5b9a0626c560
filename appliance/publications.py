"""Publications: channels published to WHIP servers (RFC 9725, the box as the
client), so media servers that already scale (Janus, MediaMTX, LiveKit,
another appliance) serve the listeners one box cannot.

    Publications.start(id, spec)
      service nursery
        publication task (one per publication)     runs until it is removed
          attempt: engine.start_publication(sink,  webrtcbin offers the sink's Opus
                     the last 201's ICE servers)
                   POST the offer (307/308 followed, at most MAX_REDIRECTS)
                   set_answer, watch its state     until the path breaks
                     candidates gathered later     PATCHed (trickle), when the 201 allows
                     the server silent             ICE restart by PATCH, when the 201 allows
                   DELETE the resource             shielded, bounded
          backoff: 1, 2, 4 ... 30 s, then again

A 201's ``Link: <stun:...>; rel="ice-server"`` headers (RFC 9725 section
4.6) are read strictly (ice_servers_from_links) and given to webrtcbin for
the next attempt: webrtcbin gathers before the POST, so the servers a POST's
answer names can only serve the attempts after it.

A live server that falls silent (the path broke) gets an ICE restart (RFC
9725 section 4.4) on the same resource: new ICE credentials and our
candidates PATCHed with ``If-Match: "*"``, its 200's credentials (and
candidates) given to the engine's ICE agent; DTLS and the media go on. A
server that refuses it (405, 501, any other answer), or a restart after
which it is not heard within PEER_SILENT_S, ends the attempt: DELETE and a
fresh POST with the backoff.

Each attempt's publication is the channel's own Opus (its listeners'
encode). What a server refused (its status and the start of its body),
the attempts, the state and what was sent are kept for the status and the
admin page. A server that hangs, answers garbage or redirects in a loop
costs a bounded wait per attempt and never touches the box's listeners.
"""
from __future__ import annotations

import logging
from functools import partial
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin

import httpx
import trio

from .engine import Engine, EngineError
from .errors import InvalidError
from .events import (AnswerFailed, CandidateGathered, ListenerState, ListenerStateChanged,
                     OfferReady)
from .model import PublicationSpec
from . import outbound
from .outbound import AttemptFailed, BodyTooLong, read_body
from .sdp import parse_sdpfrag

__all__ = ["Publication", "Publications", "PublicationError", "ice_servers_from_links"]

log = logging.getLogger(__name__)

REDIRECTS = (httpx.codes.TEMPORARY_REDIRECT, httpx.codes.PERMANENT_REDIRECT)   # same method

MAX_REDIRECTS = 5
HTTP_TIMEOUT_S = 10.0
OFFER_TIMEOUT_S = 15.0          # webrtcbin gathers its candidates
CONNECT_TIMEOUT_S = 20.0        # from the answer to ICE and DTLS up
# A live server is heard from every few seconds (its RTCP receiver reports,
# its ICE checks). webrtcbin 1.22 has no consent checks (RFC 7675): a path
# that breaks silently (a Wi-Fi hop, a firewall) shows no event. So nothing
# heard for this long, from a server heard regularly before, ends the attempt:
# DELETE and a fresh POST with the backoff.
PEER_SILENT_S = 10.0
MAX_BODY_SHOWN = 300
MAX_ANSWER_BYTES = 64 * 1024
MAX_ICE_SERVERS = 4             # the engine's AE_MAX_ICE_SERVERS
MAX_LINK_CHARS = 2048           # all of a 201's Link headers together
MAX_ICE_FIELD = 256             # a host, a username, a credential
MAX_TRICKLED = 16               # candidates PATCHed per attempt
MAX_ETAG = 256
MAX_RESTART_CANDIDATES = 8      # the server's, from a restart's 200 (the engine's bound too)
TRICKLE_TYPE = "application/trickle-ice-sdpfrag"
TRICKLE_REFUSED = (httpx.codes.METHOD_NOT_ALLOWED, httpx.codes.UNSUPPORTED_MEDIA_TYPE,
                   httpx.codes.NOT_IMPLEMENTED)


class PublicationError(AttemptFailed):
    """Why an attempt ended (plain text for the admin page)."""


class LinkRefused(Exception):
    """Why a server's ``Link: rel="ice-server"`` headers were not used."""


# ---- Link: <uri>; rel="ice-server" (RFC 9725 section 4.6, RFC 8288) ----------------------

_LINK = re.compile(r'\s*<([^<>]*)>((?:\s*;\s*[A-Za-z][A-Za-z0-9*-]*\s*=\s*'
                   r'(?:"[^"\\]*"|[^",;\s]+))*)\s*(?:,|$)')
_PARAM = re.compile(r'\s*;\s*([A-Za-z][A-Za-z0-9*-]*)\s*=\s*(?:"([^"\\]*)"|([^",;\s]+))')
_ICE_URI = re.compile(r"(stun|turns?):(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?"
                      r"(?:\?transport=(udp|tcp))?")
_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class IceServer:
    uri: str            # as the server named it, without credentials (the status shows it)
    for_webrtcbin: str  # stun://host:port, turn://user:pass@host:port?transport=udp


def ice_servers_from_links(values: list[str]) -> list[IceServer]:
    """The STUN and TURN servers of a response's Link headers, read strictly:
    at most MAX_ICE_SERVERS within MAX_LINK_CHARS, only stun:, turn: and
    turns: URIs with a host name or address and a port in range, TURN with a
    username and a password credential of printable ASCII. Links of other
    relations are left alone; anything else refuses them all (LinkRefused)."""
    text = ",".join(values)
    if len(text) > MAX_LINK_CHARS:
        raise LinkRefused(f"its Link headers are over {MAX_LINK_CHARS} characters")
    servers: list[IceServer] = []
    at = 0
    while at < len(text.rstrip()):
        link = _LINK.match(text, at)
        if link is None:
            raise LinkRefused(f"a Link header is malformed at character {at}")
        at = link.end()
        params: dict[str, str] = {}
        for param in _PARAM.finditer(link.group(2)):
            name = param.group(1).lower()
            if name in params:
                raise LinkRefused(f"a Link names {name} twice")
            params[name] = param.group(2) if param.group(2) is not None else param.group(3)
        if "ice-server" not in params.get("rel", "").lower().split():
            continue
        if len(servers) == MAX_ICE_SERVERS:
            raise LinkRefused(f"more than {MAX_ICE_SERVERS} ICE servers")
        servers.append(_ice_server(link.group(1), params))
    return servers


def _ice_server(uri: str, params: dict[str, str]) -> IceServer:
    shown = uri[:80]
    found = _ICE_URI.fullmatch(uri)
    if found is None:
        raise LinkRefused(f"an ICE server is no stun:, turn: or turns: host[:port] ({shown!r})")
    scheme, host, port, transport = found.groups()
    if len(host) > MAX_ICE_FIELD or not (host.startswith("[") or _HOSTNAME.fullmatch(host)):
        raise LinkRefused(f"an ICE server's host is not one ({shown!r})")
    if port is not None and not 1 <= int(port) <= 65535:
        raise LinkRefused(f"an ICE server's port is out of range ({shown!r})")
    if scheme == "stun" and transport:
        raise LinkRefused(f"a STUN server with a transport ({shown!r})")
    # webrtcbin is given the port: the default one where the URI names none
    address = f"{host}:{port or (5349 if scheme == 'turns' else 3478)}"
    if scheme == "stun":
        return IceServer(uri, f"stun://{address}")
    username, credential = params.get("username"), params.get("credential")
    if params.get("credential-type", "password").lower() != "password":
        raise LinkRefused(f"a TURN server's credential is not a password ({shown!r})")
    for what, value in (("username", username), ("credential", credential)):
        if not value or len(value) > MAX_ICE_FIELD or not _PRINTABLE.fullmatch(value):
            raise LinkRefused(f"a TURN server's {what} is missing or not printable ASCII "
                              f"within {MAX_ICE_FIELD} characters ({shown!r})")
    userinfo = f"{quote(username, safe='')}:{quote(credential, safe='')}"
    query = f"?transport={transport}" if transport else ""
    return IceServer(uri, f"{scheme}://{userinfo}@{address}{query}")


@dataclass
class Created:
    """A WHIP server's 201: its answer and what it says about the resource."""
    answer: str
    url: str                    # the URL that answered (after redirects)
    location: str | None
    etag: str | None            # usable in If-Match, or None
    trickle: bool               # candidates may be PATCHed
    links: list[str]


def with_credentials(offer: str, ufrag: str, pwd: str) -> str:
    """The offer with new ICE credentials (after an ICE restart): what
    later fragments are built from."""
    lines = [f"a=ice-ufrag:{ufrag}" if line.startswith("a=ice-ufrag:") else
             f"a=ice-pwd:{pwd}" if line.startswith("a=ice-pwd:") else line
             for line in offer.splitlines()]
    return "\r\n".join(lines) + "\r\n"


def restart_fragment(offer: str, candidates: list[str]) -> str | None:
    """An ICE restart's sdpfrag (RFC 9725 section 4.4): the credentials of
    ``offer`` (with_credentials), its first m-line and mid, ``candidates``
    (ours: the offer's and those gathered later)."""
    first = trickle_fragment(offer, 0, "end-of-candidates")
    if first is None:
        return None
    head = first.removesuffix("a=end-of-candidates\r\n")
    return head + "".join(f"a={c.removeprefix('a=')}\r\n" for c in candidates)


def trickle_fragment(offer: str, mline_index: int, candidate: str) -> str | None:
    """An RFC 8840 sdpfrag for one candidate of our offer's m-line
    ``mline_index``: the offer's ICE credentials, its m= and mid lines."""
    ufrag = pwd = None
    sections: list[list[str]] = []
    for line in offer.splitlines():
        if line.startswith("m="):
            sections.append([line])
        elif line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line
        elif line.startswith("a=ice-pwd:") and pwd is None:
            pwd = line
        elif line.startswith("a=mid:") and sections and len(sections[-1]) == 1:
            sections[-1].append(line)
    if not ufrag or not pwd or not 0 <= mline_index < len(sections) \
            or len(sections[mline_index]) != 2:
        return None
    candidate = candidate.removeprefix("a=")
    return "\r\n".join([ufrag, pwd, *sections[mline_index], f"a={candidate}"]) + "\r\n"


@dataclass(eq=False)
class Publication:
    id: str
    spec: PublicationSpec
    in_config: bool = False          # a [[publications]] table: not removed through the API
    state: str = "starting"          # starting, offering, connecting, live, retrying, stopped
    attempts: int = 0
    error: str | None = None         # the last attempt's failure
    connected_since: float | None = None
    resource: str | None = None
    packets_sent: int = 0
    bytes_sent: int = 0
    rtt_ms: float | None = None
    fraction_lost: float | None = None
    heard_s_ago: float | None = None   # the server's last datagram (its sign of life)
    bitrate_bps: float | None = None
    ice_servers: list[IceServer] = field(default_factory=list)   # from the last 201
    ice_servers_error: str | None = None
    trickled: int = 0                # candidates PATCHed in this attempt
    trickle_error: str | None = None
    ice_restarts: int = 0            # ICE restarts the server took in this attempt
    ice_restart_error: str | None = None   # why the last one failed
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "sink_id": self.spec.sink_id, "url": self.spec.url,
                "relay_whep_url": self.spec.relay_whep_url or None, "in_config": self.in_config,
                "state": self.state, "attempts": self.attempts, "error": self.error,
                "resource": self.resource,
                "connected_s": None if self.connected_since is None
                else round(time.monotonic() - self.connected_since, 1),
                "packets_sent": self.packets_sent, "bitrate_bps": self.bitrate_bps,
                "rtt_ms": self.rtt_ms, "fraction_lost": self.fraction_lost,
                "heard_s_ago": self.heard_s_ago,
                "ice_servers": [server.uri for server in self.ice_servers],
                "ice_servers_error": self.ice_servers_error,
                "trickled": self.trickled, "trickle_error": self.trickle_error,
                "ice_restarts": self.ice_restarts, "ice_restart_error": self.ice_restart_error}


class Publications:
    """The publications of one service, by id."""

    def __init__(self, engine: Engine, nursery: trio.Nursery):
        self.engine = engine
        self._nursery = nursery
        self.by_id: dict[str, Publication] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def start(self, publication_id: str, spec: PublicationSpec, *,
              in_config: bool = False) -> Publication:
        publication = Publication(publication_id, spec, in_config)
        self.by_id[publication_id] = publication
        self._nursery.start_soon(self._run, publication)
        return publication

    async def stop(self, publication_id: str) -> None:
        """End a publication (its resource DELETEd) and wait for it."""
        publication = self.by_id.pop(publication_id)
        publication.cancel_scope.cancel()
        with trio.move_on_after(HTTP_TIMEOUT_S + 5):
            await publication.done.wait()

    async def aclose(self) -> None:
        for publication_id in list(self.by_id):
            await self.stop(publication_id)

    def status(self) -> list[dict[str, Any]]:
        return [p.status() for p in self.by_id.values()]

    def overflow_url(self, sink_id: str) -> str | None:
        """Where a listener of ``sink_id`` goes while the box is full: the
        WHEP address of a live publication of it, if one names one."""
        for publication in self.by_id.values():
            if publication.spec.sink_id == sink_id and publication.state == "live" \
                    and publication.spec.relay_whep_url:
                return publication.spec.relay_whep_url
        return None

    # ---- one publication ----------------------------------------------------------

    async def _run(self, publication: Publication) -> None:
        try:
            with publication.cancel_scope:
                async with outbound.client(publication.spec.tls_ca, HTTP_TIMEOUT_S) as http:
                    await outbound.keep_trying(
                        partial(self._attempt, publication, http),
                        name=f"publication {publication.id}", peer="server",
                        up_since=lambda: publication.connected_since,
                        failed=partial(self._failed, publication))
        finally:
            publication.state = "stopped"
            publication.done.set()

    @staticmethod
    def _failed(publication: Publication, why: str) -> None:
        publication.error, publication.connected_since = why, None
        publication.state = "retrying"

    async def _attempt(self, publication: Publication, http: httpx.AsyncClient) -> None:
        publication.attempts += 1
        spec = publication.spec
        publication.state = "offering"
        publication.trickled, publication.trickle_error = 0, None
        publication.ice_restarts = 0
        try:
            engine_publication = self.engine.start_publication(
                spec.sink_id, [server.for_webrtcbin for server in publication.ice_servers])
        except EngineError as error:
            raise PublicationError(f"the channel cannot be published: {error.message}") from None
        resource = None
        try:
            offer = None
            with trio.move_on_after(OFFER_TIMEOUT_S):
                async for event in engine_publication.events:
                    if isinstance(event, OfferReady):
                        offer = event.sdp
                        break
                    if isinstance(event, AnswerFailed):
                        raise PublicationError(f"no offer: {event.reason}")
            if offer is None:
                raise PublicationError("no offer: gathering candidates took too long")
            created = await self._post(http, spec, offer)
            resource = publication.resource = \
                urljoin(created.url, created.location) if created.location else None
            self._take_links(publication, created.links)
            try:
                engine_publication.set_answer(created.answer)
            except EngineError as error:
                raise PublicationError(f"the server's answer was refused: {error.message}") \
                    from None
            publication.state = "connecting"
            trickle = restart = None
            if created.trickle and created.etag and resource:
                trickle = Trickle(publication, http, resource, created.etag, offer)
            if created.trickle and resource:
                restart = IceRestart(publication, http, engine_publication, resource, offer,
                                     trickle)
            await self._watch(publication, engine_publication, trickle, restart)
        finally:
            with trio.CancelScope(shield=True):
                await engine_publication.aclose()
                if resource is not None:
                    with trio.move_on_after(3):
                        try:
                            await http.delete(resource, headers=self._auth(spec))
                        except (httpx.HTTPError, OSError, ssl.SSLError):
                            pass   # it times the session out itself
                publication.resource = None

    @staticmethod
    def _auth(spec: PublicationSpec) -> dict[str, str]:
        return {"Authorization": f"Bearer {spec.token}"} if spec.token else {}

    @staticmethod
    def _take_links(publication: Publication, links: list[str]) -> None:
        """The 201's ICE servers, for the next attempt; hostile ones refused
        (all of them, the reason in the status), the last good ones kept."""
        try:
            publication.ice_servers = ice_servers_from_links(links)
            publication.ice_servers_error = None
        except LinkRefused as refused:
            publication.ice_servers_error = f"the server's ICE servers were refused: {refused}"
            log.warning("publication %s: %s", publication.id, publication.ice_servers_error)

    async def _post(self, http: httpx.AsyncClient, spec: PublicationSpec,
                    offer: str) -> Created:
        """POST the offer; 307 and 308 are followed (the same POST, to at
        most MAX_REDIRECTS places, never in a loop). At most
        MAX_ANSWER_BYTES of the answer are read."""
        url, seen = spec.url, set()
        headers = {"Content-Type": "application/sdp", **self._auth(spec)}
        for _ in range(MAX_REDIRECTS + 1):
            seen.add(url)
            async with http.stream("POST", url, content=offer, headers=headers) as response:
                try:
                    body = await read_body(response, MAX_ANSWER_BYTES, HTTP_TIMEOUT_S)
                except BodyTooLong:
                    raise PublicationError(f"the server's answer is over "
                                           f"{MAX_ANSWER_BYTES // 1024} KB or never ends") from None
            text = body.decode("utf-8", "replace")
            if response.status_code in REDIRECTS and "Location" in response.headers:
                url = urljoin(url, response.headers["Location"])
                if url in seen:
                    raise PublicationError(f"the server redirects in a loop ({url[:200]})")
                continue
            if response.status_code != httpx.codes.CREATED:
                shown = text[:MAX_BODY_SHOWN].strip()
                raise PublicationError(f"the server answered {response.status_code}" +
                                       (f": {shown}" if shown else ""))
            if not response.headers.get("Content-Type", "").startswith("application/sdp"):
                raise PublicationError("the server's 201 is not application/sdp")
            etag = response.headers.get("ETag")
            if etag is not None and (len(etag) > MAX_ETAG or not _PRINTABLE.fullmatch(etag)):
                etag = None
            accept_patch = response.headers.get("Accept-Patch")
            return Created(text, url, response.headers.get("Location"), etag,
                           accept_patch is None or TRICKLE_TYPE in accept_patch.lower(),
                           response.headers.get_list("Link"))
        raise PublicationError(f"more than {MAX_REDIRECTS} redirects")

    async def _watch(self, publication: Publication, engine_publication: Any,
                     trickle: Trickle | None, restart: IceRestart | None) -> None:
        """Until the path breaks: its state from events, candidates gathered
        late to the trickle, what it sent (once a second) for the status;
        a silent server gets an ICE restart (``restart``) first."""
        deadline = trio.current_time() + CONNECT_TIMEOUT_S
        last: tuple[float, int] | None = None
        heard = Heard()
        restarted_at: float | None = None   # the last restart, until the server is heard
        async with trio.open_nursery() as nursery:
            if trickle is not None:
                nursery.start_soon(trickle.run)

            async def events() -> None:
                async for event in engine_publication.events:
                    if isinstance(event, CandidateGathered):
                        if restart is not None:
                            restart.gathered.append(event.candidate)
                        if trickle is not None:
                            trickle.add(event)
                    elif isinstance(event, ListenerStateChanged):
                        if event.state.is_live and publication.connected_since is None:
                            publication.state = "live"
                            publication.connected_since = time.monotonic()
                        if event.state.is_final or event.state == ListenerState.DISCONNECTED:
                            nursery.cancel_scope.cancel()
                            return
            nursery.start_soon(events)
            while True:
                await trio.sleep(1)
                if publication.connected_since is None and trio.current_time() > deadline:
                    nursery.cancel_scope.cancel()   # raised outside: no exception group
                    break
                stats = engine_publication.stats()
                now = time.monotonic()
                publication.packets_sent, publication.bytes_sent = \
                    stats.packets_sent, stats.bytes_sent
                if last is not None and now > last[0]:
                    publication.bitrate_bps = round((stats.bytes_sent - last[1]) * 8 /
                                                    (now - last[0]))
                last = (now, stats.bytes_sent)
                publication.rtt_ms, publication.fraction_lost = stats.rtt_ms, stats.fraction_lost
                publication.heard_s_ago = None if stats.last_rx_age_s is None \
                    else round(stats.last_rx_age_s, 1)
                age = stats.last_rx_age_s
                if restarted_at is not None:
                    if age is not None and now - age > restarted_at:
                        restarted_at = None        # heard since the restart
                    elif now - restarted_at > PEER_SILENT_S:
                        publication.ice_restart_error = (
                            f"the server was not heard within {PEER_SILENT_S:.0f} s of the "
                            "ICE restart")
                        nursery.cancel_scope.cancel()
                        break
                elif publication.connected_since is not None and heard.silent(age):
                    if restart is None or not await restart.run():
                        nursery.cancel_scope.cancel()
                        break
                    heard, restarted_at = Heard(), time.monotonic()
        if publication.connected_since is None and trio.current_time() > deadline:
            raise PublicationError("not connected in time (ICE or DTLS)")
        if heard.broke or restarted_at is not None:
            why = f"; {publication.ice_restart_error}" if publication.ice_restart_error else ""
            raise PublicationError(f"nothing heard from the server for {PEER_SILENT_S:.0f} s: "
                                   f"the path broke{why}")


class Heard:
    """Whether a live server went silent: armed only once it was heard from
    anew while live (a server that sends nothing at all after DTLS is not
    taken for a broken path)."""

    REFRESHES_TO_ARM = 1

    def __init__(self) -> None:
        self.refreshes = 0
        self.broke = False
        self._heard_at: float | None = None

    def silent(self, age_s: float | None) -> bool:
        """Fed, once a second, the age of the server's last datagram."""
        if age_s is None:
            return False
        heard_at = time.monotonic() - age_s
        if self._heard_at is not None and heard_at > self._heard_at + 0.05:
            self.refreshes += 1
        self._heard_at = heard_at if self._heard_at is None else max(self._heard_at, heard_at)
        self.broke = self.refreshes >= self.REFRESHES_TO_ARM and age_s > PEER_SILENT_S
        return self.broke


class Trickle:
    """Candidates webrtcbin gathers after the offer went out, PATCHed to the
    resource (RFC 9725 section 4.3.1) one by one with ``If-Match``: at most
    MAX_TRICKLED an attempt; a server that answers 405, 415 or 501 does not
    trickle (nor one that refuses otherwise) and gets no more this attempt:
    the offer carried the candidates gathered until then."""

    def __init__(self, publication: Publication, http: httpx.AsyncClient, resource: str,
                 etag: str, offer: str):
        self.publication = publication
        self.http = http
        self.resource = resource
        self.etag = etag
        self.offer = offer
        self._send, self._receive = trio.open_memory_channel[CandidateGathered](MAX_TRICKLED)
        self._queued = 0

    def add(self, event: CandidateGathered) -> None:
        if self._queued < MAX_TRICKLED and self.publication.trickle_error is None:
            self._queued += 1
            self._send.send_nowait(event)

    async def run(self) -> None:
        async for event in self._receive:
            fragment = trickle_fragment(self.offer, event.mline_index, event.candidate)
            if fragment is None or event.candidate.removeprefix("a=") in self.offer:
                continue   # webrtcbin may signal one the offer carries already
            # the offer's credentials and ETag, or an ICE restart's since
            headers = {"Content-Type": TRICKLE_TYPE, "If-Match": self.etag,
                       **Publications._auth(self.publication.spec)}
            try:
                async with self.http.stream("PATCH", self.resource, content=fragment,
                                            headers=headers) as response:
                    await read_body(response, MAX_BODY_SHOWN, HTTP_TIMEOUT_S)
            except (BodyTooLong, httpx.HTTPError, OSError, ssl.SSLError) as error:
                self.publication.trickle_error = f"a PATCH failed: {error or type(error).__name__}"
                return
            if response.is_success:
                self.publication.trickled += 1
                continue
            self.publication.trickle_error = (
                f"the server does not take trickled candidates ({response.status_code})"
                if response.status_code in TRICKLE_REFUSED
                else f"the server answered a PATCH with {response.status_code}")
            return


class IceRestart:
    """ICE restarts of one attempt's publication (RFC 9725 section 4.4): the
    engine's ICE agent restarts (new credentials, our candidates kept), the
    server is PATCHed an sdpfrag with them and ``If-Match: "*"``; its 200
    (an sdpfrag with its new credentials, perhaps candidates, a new ETag)
    goes to the engine, and the trickle goes on with both."""

    def __init__(self, publication: Publication, http: httpx.AsyncClient, engine_publication: Any,
                 resource: str, offer: str, trickle: Trickle | None):
        self.publication = publication
        self.http = http
        self.engine_publication = engine_publication
        self.resource = resource
        self.offer = offer
        self.trickle = trickle
        self.gathered: list[str] = []    # our candidates gathered after the offer

    async def run(self) -> bool:
        """One restart; False (the reason in ``ice_restart_error``) when it
        failed: the attempt ends."""
        try:
            await self._restart()
        except RestartFailed as failed:
            self.publication.ice_restart_error = str(failed)
            log.warning("publication %s: ICE restart failed: %s", self.publication.id, failed)
            return False
        self.publication.ice_restarts += 1
        self.publication.ice_restart_error = None
        return True

    async def _restart(self) -> None:
        try:
            ufrag, pwd = self.engine_publication.ice_restart()
        except EngineError as error:
            raise RestartFailed(f"the engine could not restart ICE: {error.message}") from None
        offer = with_credentials(self.offer, ufrag, pwd)
        ours = [line[2:] for line in offer.splitlines() if line.startswith("a=candidate:")]
        fragment = restart_fragment(offer, ours + [c for c in self.gathered if c not in ours])
        if fragment is None:
            raise RestartFailed("our offer has no ICE credentials or m-line")
        headers = {"Content-Type": TRICKLE_TYPE, "If-Match": '"*"',
                   **Publications._auth(self.publication.spec)}
        try:
            async with self.http.stream("PATCH", self.resource, content=fragment,
                                        headers=headers) as response:
                body = await read_body(response, MAX_ANSWER_BYTES, HTTP_TIMEOUT_S)
        except (BodyTooLong, httpx.HTTPError, OSError, ssl.SSLError) as error:
            raise RestartFailed(f"its PATCH failed: {error or type(error).__name__}") from None
        if response.status_code != httpx.codes.OK:
            raise RestartFailed(
                f"the server does not restart ICE ({response.status_code})"
                if response.status_code in TRICKLE_REFUSED
                else f"the server answered the restart with {response.status_code}")
        if not response.headers.get("Content-Type", "").lower().startswith(TRICKLE_TYPE):
            raise RestartFailed(f"the server's 200 is not {TRICKLE_TYPE}")
        try:
            server_ufrag, server_pwd, found = parse_sdpfrag(body.decode("utf-8", "replace"))
        except InvalidError as error:
            raise RestartFailed(f"the server's 200 is no sdpfrag: {error}") from None
        if not server_ufrag or not server_pwd:
            raise RestartFailed("the server's 200 names no new ICE credentials")
        candidates = [c for _, _, c in found if c][:MAX_RESTART_CANDIDATES]
        try:
            self.engine_publication.restart_answer(server_ufrag, server_pwd, candidates)
        except EngineError as error:
            raise RestartFailed(f"the server's restart answer was refused: {error.message}") \
                from None
        self.offer = offer
        if self.trickle is not None:   # later candidates: our new credentials, its new ETag
            self.trickle.offer = offer
            etag = response.headers.get("ETag")
            if etag is not None and len(etag) <= MAX_ETAG and _PRINTABLE.fullmatch(etag):
                self.trickle.etag = etag


class RestartFailed(Exception):
    """Why an ICE restart failed (plain text for the status)."""
