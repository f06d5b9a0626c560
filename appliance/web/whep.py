"""WHEP (draft-ietf-wish-whep, with WHIP RFC 9725's shared rules) plus the
older ScreamRouter-style extras. See docs/API.md for the contract."""
from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify, request

from ..errors import InvalidError
from ..sdp import check_offer
from ..service import (
    BadRequestError, NotFoundError, PreconditionFailedError, PreconditionRequiredError, Session,
    UnsupportedError, parse_sdpfrag,
)
from .common import UnsupportedMediaTypeError, client_address, media_type, read_body, \
    read_json, service

__all__ = ["blueprint"]

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
    registry = {"sink": svc.sinks, "source": svc.sources, "route": svc.routes}[kind]
    if ident not in registry:
        raise NotFoundError(f"no {kind} {ident!r}")
    if media_type() != SDP:
        raise UnsupportedMediaTypeError(f"the offer must be sent as {SDP}")
    svc.check_post_rate(client_address())
    try:
        # checked before any transport sees it: webrtcbin aborts the process on some shapes
        offer = check_offer(await read_body())
    except InvalidError as error:
        # until appliance.web maps appliance.errors to statuses itself
        raise BadRequestError(error.message) from None
    session, answer = await svc.open_session((kind, ident), offer.sdp, client_address())
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


def _check_if_match(session: Session, *, required: bool) -> None:
    value = request.headers.get("If-Match")
    if value is None:
        if required:
            raise PreconditionRequiredError("an ICE restart needs If-Match")
        return
    tags = [t.strip() for t in value.split(",")]
    if "*" not in tags and session.etag not in tags:
        raise PreconditionFailedError("If-Match does not match the session's ETag")


@blueprint.route("/<sink_id>/<session_id>", methods=["PATCH", "DELETE", "POST", "OPTIONS"])
async def session_resource(sink_id: str, session_id: str) -> Response:
    svc = service()
    if request.method == "OPTIONS":
        return _preflight("OPTIONS, PATCH, POST, DELETE", endpoint=False)
    session = svc.find_session(sink_id, session_id)
    if request.method == "DELETE":
        await svc.close_session(session, "deleted")
        return Response("", status=200)
    svc.heartbeat(session)  # any request on the session shows the client is there
    if request.method == "POST":  # ScreamRouter-style heartbeat
        return Response("", status=204)
    kind = media_type()
    if kind == SDPFRAG:
        fragment = await read_body()
        ufrag, pwd, found = parse_sdpfrag(fragment)
        restart = (ufrag is not None and ufrag != session.remote_ufrag) or \
            (pwd is not None and ufrag is None)
        _check_if_match(session, required=restart)
        if restart:
            raise UnsupportedError("ICE restart is not supported: DELETE this session "
                                   "and POST a new offer")
        candidates = [(svc.mline_for(session, mid, index), cand) for mid, index, cand in found]
        svc.add_candidates(session, candidates)
        return Response("", status=204)
    if kind == "application/json":
        body = await read_json()
        items = body if isinstance(body, list) else [body]
        candidates = []
        for item in items:
            if not isinstance(item, dict) or "candidate" not in item:
                raise BadRequestError('expected {"candidate": ..., "sdpMid": ...}')
            cand = item.get("candidate") or ""
            mid = item.get("sdpMid")
            index = item.get("sdpMLineIndex")
            if not isinstance(cand, str) or (mid is not None and not isinstance(mid, str)) \
                    or (index is not None and (isinstance(index, bool)
                                               or not isinstance(index, int))):
                raise BadRequestError("candidate and sdpMid must be strings, "
                                      "sdpMLineIndex an integer")
            candidates.append((svc.mline_for(session, mid, index), cand))
        svc.add_candidates(session, candidates)
        return Response("", status=204)
    raise UnsupportedMediaTypeError(f"PATCH takes {SDPFRAG} or application/json")


@blueprint.route("/<sink_id>/<session_id>/candidates", methods=["GET"])
async def session_candidates(sink_id: str, session_id: str) -> Response:
    """Server candidates gathered after the answer; returned once, then cleared."""
    svc = service()
    session = svc.find_session(sink_id, session_id)
    svc.heartbeat(session)
    return jsonify(svc.take_candidates(session))
