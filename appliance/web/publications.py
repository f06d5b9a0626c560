"""Admin API: channels published to WHIP servers (``appliance.publications``).

    GET    /api/publications          [status, ...]
    POST   /api/publications          {"id", "sink_id", "url", "token"?, "tls_ca"?} -> 201
    DELETE /api/publications/{id}     204 (its resource on the server DELETEd)
"""
from __future__ import annotations

from quart import Blueprint, Response, jsonify

from .common import read_object, service

__all__ = ["blueprint"]

blueprint = Blueprint("publications", __name__, url_prefix="/api/publications")


@blueprint.route("", methods=["GET"])
async def list_publications() -> Response:
    return jsonify(service().publication_status())


@blueprint.route("", methods=["POST"])
async def add_publication() -> Response:
    status = await service().add_publication(await read_object())
    response = jsonify(status)
    response.status_code = 201
    response.headers["Location"] = f"/api/publications/{status['id']}"
    return response


@blueprint.route("/<publication_id>", methods=["DELETE"])
async def remove_publication(publication_id: str) -> Response:
    await service().remove_publication(publication_id)
    return Response("", status=204)
