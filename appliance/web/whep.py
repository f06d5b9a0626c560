"""WHEP (draft-ietf-wish-whep, with WHIP RFC 9725's shared rules) plus the
older ScreamRouter-style extras. See docs/API.md for the contract."""
from __future__ import annotations

from typing import Protocol

from quart import Blueprint, Response, current_app, jsonify, request

from ..errors import (
    FullError, RestartRequiredError, StaleError, UnsupportedError, UnsupportedMediaError,
)
from ..model import Variant
from ..sdp import check_offer, parse_candidates_json, parse_sdpfrag
from .auth import check_admin_listening
from .common import client_address, media_type, read_body, read_json, service

__all__ = ["blueprint", "check_if_match", "SDP", "SDPFRAG"]

blueprint = Blueprint("whep", __name__, url_prefix="/api/whep")

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"


def _links(response: Response) -> Response:
    for server in current_app.appliance_config.server.ice_servers:
        response.headers.add("Link", server.link_header())
    return response


def _preflight(methods: str, *, endpoint: bool) -> Response:
    response = Response("", status=204)
    response.headers["Allow"] = methods
    response.headers["Access-Control-Allow-Methods"] = methods
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-Match"
    response.headers["Access-Control-Max-Age"] = "600"
    if endpoint:
        response.headers["Accept-Post"] = SDP
    else:
        response.headers["Accept-Patch"] = f"{SDPFRAG}, application/json"
    return _links(response)


async def _post(kind: str, ident: str) -> Response:
    svc = service()
    if request.method == "OPTIONS":
        return _preflight("OPTIONS, POST", endpoint=True)
    if not svc.open_to_listeners(kind, ident):
        check_admin_listening(f"this {kind}")
    # a hearing variant: ?mono=1&clear=1&balance=-25 (docs/API.md)
    variant = Variant.from_query(request.args.items(multi=True))
    if media_type() != SDP:
        raise UnsupportedMediaError(f"the offer must be sent as {SDP}")
    svc.check_post_rate(client_address())
    # checked before any transport sees it: webrtcbin aborts the process on some shapes
    offer = check_offer(await read_body())
    # a media server this channel is published to takes the listener while
    # the box is full, or first for a "relays first" channel (a WHEP client
    # follows 307 with the same POST)
    relay = svc.overflow_url(ident, full=False) if kind == "sink" else None
    if relay is None:
        try:
            session, answer = await svc.open_session((kind, ident), offer, client_address(),
                                                     variant)
        except FullError:
            relay = svc.overflow_url(ident, full=True) if kind == "sink" else None
            if relay is None:
                raise
    if relay is not None:
        return Response("", status=307, headers={"Location": relay, "Cache-Control": "no-store"})
    response = Response(answer, status=201, content_type=SDP)
    response.headers["Location"] = session.url
    response.headers["ETag"] = session.etag
    response.headers["Accept-Patch"] = f"{SDPFRAG}, application/json"
    return _links(response)


@blueprint.route("/<sink_id>", methods=["POST", "OPTIONS"])
async def post_sink(sink_id: str) -> Response:
    """Listen to a sink (a channel)."""
    return await _post("sink", sink_id)


@blueprint.route("/source/<source_id>", methods=["POST", "OPTIONS"])
async def post_source(source_id: str) -> Response:
    """Listen to one source: a temporary sink and route, owned by the session."""
    return await _post("source", source_id)


@blueprint.route("/route/<route_id>", methods=["POST", "OPTIONS"])
async def post_route(route_id: str) -> Response:
    """Listen to one route (its source with its gain and mute), temporarily."""
    return await _post("route", route_id)


class _Versioned(Protocol):
    """A WHEP session or a WHIP publisher: a resource with an ETag."""
    etag: str


def check_if_match(session: _Versioned, *, required: bool) -> None:
    """If-Match against the resource's ETag (WHIP and WHEP alike)."""
    value = request.headers.get("If-Match")
    if value is None:
        if required:
            raise RestartRequiredError("an ICE restart needs If-Match")
        return
    tags = [t.strip() for t in value.split(",")]
    if "*" not in tags and session.etag not in tags:
        raise StaleError("If-Match does not match the session's ETag")


@blueprint.route("/<sink_id>/<session_id>", methods=["PATCH", "DELETE", "POST", "OPTIONS"])
async def session_resource(sink_id: str, session_id: str) -> Response:
    svc = service()
    if request.method == "OPTIONS":
        return _preflight("OPTIONS, PATCH, POST, DELETE", endpoint=False)
    if request.method == "DELETE":
        await svc.end_session(sink_id, session_id)
        return Response("", status=200)
    session = svc.find_session(sink_id, session_id)
    session.heartbeat()  # any request on the session shows the client is there
    if request.method == "POST":  # ScreamRouter-style heartbeat
        return Response("", status=204)
    kind = media_type()
    if kind == SDPFRAG:
        fragment = await read_body()
        ufrag, pwd, found = parse_sdpfrag(fragment)
        restart = (ufrag is not None and ufrag != session.remote_ufrag) or \
            (pwd is not None and ufrag is None)
        check_if_match(session, required=restart)
        if restart:
            raise UnsupportedError("ICE restart is not supported: DELETE this session "
                                   "and POST a new offer")
        session.add_candidates((session.mline_for(mid, index), cand)
                               for mid, index, cand in found)
        return Response("", status=204)
    if kind == "application/json":
        found = parse_candidates_json(await read_json())
        session.add_candidates((session.mline_for(mid, index), cand)
                               for mid, index, cand in found)
        return Response("", status=204)
    raise UnsupportedMediaError(f"PATCH takes {SDPFRAG} or application/json")


@blueprint.route("/<sink_id>/<session_id>/candidates", methods=["GET"])
async def session_candidates(sink_id: str, session_id: str) -> Response:
    """Server candidates gathered after the answer; returned once, then cleared."""
    session = service().find_session(sink_id, session_id)
    session.heartbeat()
    return jsonify(session.take_candidates())
