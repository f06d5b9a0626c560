"""WHIP (RFC 9725) into the box: a publisher's Opus feeds a whip source. Over
HTTPS only (auth.py), with the source's own publish token as the bearer. See
docs/API.md for the contract."""
from __future__ import annotations

from quart import Blueprint, Response, request

from ..errors import UnsupportedError, UnsupportedMediaError
from ..sdp import check_offer, parse_sdpfrag
from .auth import bearer
from .common import client_address, media_type, read_body, service
from .whep import SDP, SDPFRAG, check_if_match

__all__ = ["blueprint"]

blueprint = Blueprint("whip", __name__, url_prefix="/api/whip")


@blueprint.route("/<source_id>", methods=["POST", "OPTIONS"])
async def publish(source_id: str) -> Response:
    """Publish into a whip source: 201 with the answer, or why not."""
    svc = service()
    if request.method == "OPTIONS":
        return Response("", status=204, headers={"Allow": "OPTIONS, POST", "Accept-Post": SDP})
    svc.check_post_rate(client_address())
    svc.check_publisher(source_id, bearer())   # before the body is read
    if media_type() != SDP:
        raise UnsupportedMediaError(f"the offer must be sent as {SDP}")
    offer = check_offer(await read_body(), publish=True)
    publisher, answer = await svc.open_publisher(source_id, bearer(), offer, client_address())
    return Response(answer, status=201, content_type=SDP, headers={
        "Location": publisher.url, "ETag": publisher.etag, "Accept-Patch": SDPFRAG})


@blueprint.route("/<source_id>/<publisher_id>", methods=["PATCH", "DELETE", "OPTIONS"])
async def publisher_resource(source_id: str, publisher_id: str) -> Response:
    """The publisher's resource: trickled candidates (the box is ICE-lite: it
    learns the publisher's addresses from its checks) and the end."""
    svc = service()
    if request.method == "OPTIONS":
        return Response("", status=204, headers={"Allow": "OPTIONS, PATCH, DELETE",
                                                 "Accept-Patch": SDPFRAG})
    publisher = svc.find_publisher(source_id, publisher_id)
    if request.method == "DELETE":
        await svc.end_publisher(publisher)
        return Response("", status=200)
    if media_type() != SDPFRAG:
        raise UnsupportedMediaError(f"PATCH takes {SDPFRAG}")
    ufrag, pwd, _found = parse_sdpfrag(await read_body())
    restart = (ufrag is not None and ufrag != publisher.offer.ice_ufrag) or \
        (pwd is not None and ufrag is None)
    check_if_match(publisher, required=restart)
    if restart:
        raise UnsupportedError("ICE restart is not supported: DELETE this resource and POST "
                               "a new offer")
    return Response("", status=204)
