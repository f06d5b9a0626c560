"""Publications: channels published to WHIP servers (RFC 9725, the box as the
client), so media servers that already scale (Janus, MediaMTX, LiveKit,
another appliance) serve the listeners one box cannot.

    Publications.start(id, spec)
      service nursery
        publication task (one per publication)     runs until it is removed
          attempt: engine.start_publication(sink)  webrtcbin offers the sink's Opus
                   POST the offer (307/308 followed, at most MAX_REDIRECTS)
                   set_answer, watch its state     until the path breaks
                   DELETE the resource             shielded, bounded
          backoff: 1, 2, 4 ... 30 s, then again

Each attempt's publication is the channel's own Opus (its listeners'
encode). What a server refused (its status and the start of its body),
the attempts, the state and what was sent are kept for the status and the
admin page. A server that hangs, answers garbage or redirects in a loop
costs a bounded wait per attempt and never touches the box's listeners.
"""
from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
import trio

from .engine import Engine, EngineError
from .events import AnswerFailed, ListenerState, ListenerStateChanged, OfferReady
from .model import PublicationSpec
from .outbound import BodyTooLong, backoff_s, read_body, tls_context

__all__ = ["Publication", "Publications", "PublicationError"]

log = logging.getLogger(__name__)

REDIRECTS = (httpx.codes.TEMPORARY_REDIRECT, httpx.codes.PERMANENT_REDIRECT)   # same method

MAX_REDIRECTS = 5
HTTP_TIMEOUT_S = 10.0
OFFER_TIMEOUT_S = 15.0          # webrtcbin gathers its candidates
CONNECT_TIMEOUT_S = 20.0        # from the answer to ICE and DTLS up
STEADY_S = 30.0                 # connected this long: the next failure starts the backoff over
MAX_BODY_SHOWN = 300
MAX_ANSWER_BYTES = 64 * 1024


class PublicationError(Exception):
    """Why an attempt ended (plain text for the admin page)."""


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
    bitrate_bps: float | None = None
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
                "rtt_ms": self.rtt_ms, "fraction_lost": self.fraction_lost}


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
                failures = 0
                async with httpx.AsyncClient(verify=tls_context(publication.spec.tls_ca),
                                             timeout=HTTP_TIMEOUT_S,
                                             follow_redirects=False) as http:
                    while True:
                        publication.attempts += 1
                        try:
                            await self._attempt(publication, http)
                            publication.error = "the connection ended"
                        except PublicationError as error:
                            publication.error = str(error)
                        except (httpx.HTTPError, OSError, ssl.SSLError) as error:
                            publication.error = f"cannot reach the server: {error}"
                        except Exception as error:   # whatever a server sends, never the box
                            log.exception("publication %s: attempt failed", publication.id)
                            publication.error = f"the attempt failed: {error!r}"[:300]
                        steady = publication.connected_since is not None and \
                            time.monotonic() - publication.connected_since >= STEADY_S
                        failures = 0 if steady else failures + 1
                        publication.connected_since = None
                        publication.state = "retrying"
                        wait = backoff_s(failures)
                        log.warning("publication %s: %s; again in %d s", publication.id,
                                    publication.error, wait)
                        await trio.sleep(wait)
        finally:
            publication.state = "stopped"
            publication.done.set()

    async def _attempt(self, publication: Publication, http: httpx.AsyncClient) -> None:
        spec = publication.spec
        publication.state = "offering"
        try:
            engine_publication = self.engine.start_publication(spec.sink_id)
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
            answer, location, url = await self._post(http, spec, offer)
            resource = publication.resource = urljoin(url, location) if location else None
            try:
                engine_publication.set_answer(answer)
            except EngineError as error:
                raise PublicationError(f"the server's answer was refused: {error.message}") \
                    from None
            publication.state = "connecting"
            await self._watch(publication, engine_publication)
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

    async def _post(self, http: httpx.AsyncClient, spec: PublicationSpec,
                    offer: str) -> tuple[str, str | None, str]:
        """POST the offer; 307 and 308 are followed (the same POST, to at
        most MAX_REDIRECTS places, never in a loop). Returns the answer, its
        Location and the URL that gave it; at most MAX_ANSWER_BYTES are read."""
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
            return text, response.headers.get("Location"), url
        raise PublicationError(f"more than {MAX_REDIRECTS} redirects")

    async def _watch(self, publication: Publication, engine_publication: Any) -> None:
        """Until the path breaks: its state from events, what it sent (once a
        second) for the status."""
        deadline = trio.current_time() + CONNECT_TIMEOUT_S
        last: tuple[float, int] | None = None
        async with trio.open_nursery() as nursery:
            async def events() -> None:
                async for event in engine_publication.events:
                    if isinstance(event, ListenerStateChanged):
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
                    raise PublicationError("not connected in time (ICE or DTLS)")
                stats = engine_publication.stats()
                now = time.monotonic()
                publication.packets_sent, publication.bytes_sent = \
                    stats.packets_sent, stats.bytes_sent
                if last is not None and now > last[0]:
                    publication.bitrate_bps = round((stats.bytes_sent - last[1]) * 8 /
                                                    (now - last[0]))
                last = (now, stats.bytes_sent)
                publication.rtt_ms, publication.fraction_lost = stats.rtt_ms, stats.fraction_lost
