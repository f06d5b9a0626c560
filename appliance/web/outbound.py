"""Admin API: where the box sends its channels, two collections of the same
shape: WHIP servers it publishes to (``appliance.publications``) and Janus
relays that carry them (``appliance.relays``).

    GET    /api/publications          [status, ...]
    POST   /api/publications          {"id", "sink_id", "url", "token"?, "tls_ca"?} -> 201
    DELETE /api/publications/{id}     204 (its resource on the server DELETEd)

    GET    /api/relays                [status, ...]
    POST   /api/relays                {"id", "url", "channels", "api_secret"?, "admin_key"?,
                                       "tls_ca"?, "srtp"?, "listen_url"?} -> 201
    DELETE /api/relays/{id}           204 (its mountpoints destroyed on the relay)
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from quart import Blueprint, Response, jsonify

from ..service import Service
from .common import read_object, service

__all__ = ["publications", "relays"]


def _collection(name: str, *, status: Callable[[Service], list[dict[str, Any]]],
                add: Callable[[Service, Any], Awaitable[dict[str, Any]]],
                remove: Callable[[Service, str], Awaitable[None]]) -> Blueprint:
    """``/api/<name>``: list, add (201 with its Location), remove (204)."""
    blueprint = Blueprint(name, __name__, url_prefix=f"/api/{name}")

    @blueprint.route("", methods=["GET"])
    async def listed() -> Response:
        return jsonify(status(service()))

    @blueprint.route("", methods=["POST"])
    async def added() -> Response:
        entry = await add(service(), await read_object())
        response = jsonify(entry)
        response.status_code = 201
        response.headers["Location"] = f"/api/{name}/{entry['id']}"
        return response

    @blueprint.route("/<entry_id>", methods=["DELETE"])
    async def removed(entry_id: str) -> Response:
        await remove(service(), entry_id)
        return Response("", status=204)

    return blueprint


publications = _collection("publications", status=Service.publication_status,
                           add=Service.add_publication, remove=Service.remove_publication)
relays = _collection("relays", status=Service.relay_status,
                     add=Service.add_relay, remove=Service.remove_relay)
