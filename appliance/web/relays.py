"""Admin API: Janus relays carrying channels (``appliance.relays``).

    GET    /api/relays          [status, ...]
    POST   /api/relays          {"id", "url", "channels", "api_secret"?, "admin_key"?,
                                 "tls_ca"?, "srtp"?, "listen_url"?} -> 201
    DELETE /api/relays/{id}     204 (its mountpoints destroyed on the relay)
"""
from __future__ import annotations

from quart import Blueprint, Response, jsonify

from .common import read_object, service

__all__ = ["blueprint"]

blueprint = Blueprint("relays", __name__, url_prefix="/api/relays")


@blueprint.route("", methods=["GET"])
async def list_relays() -> Response:
    return jsonify(service().relay_status())


@blueprint.route("", methods=["POST"])
async def add_relay() -> Response:
    status = await service().add_relay(await read_object())
    response = jsonify(status)
    response.status_code = 201
    response.headers["Location"] = f"/api/relays/{status['id']}"
    return response


@blueprint.route("/<relay_id>", methods=["DELETE"])
async def remove_relay(relay_id: str) -> Response:
    await service().remove_relay(relay_id)
    return Response("", status=204)
