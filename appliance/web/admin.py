"""Admin API: sources, sinks and routes (list, create, update, delete) and
the appliance's status. Changes are persisted atomically. See docs/API.md."""
from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, current_app, jsonify

from .common import read_object, service

__all__ = ["blueprint", "status_reading"]

blueprint = Blueprint("admin", __name__, url_prefix="/api")

KINDS = {"sources": "source", "sinks": "sink", "routes": "route"}


def _kind(collection: str) -> str:
    return KINDS[collection]


def status_reading() -> dict[str, Any]:
    """What ``/api/status`` and ``/metrics`` say: the service's status and
    the secrets someone is guessing at from many addresses (the admin page
    warns)."""
    return {**service().status(), "guessing": current_app.admin_auth.throttle.attacks()}


@blueprint.route("/status", methods=["GET"])
async def status() -> Response:
    return jsonify(status_reading())


@blueprint.route("/<any(sources, sinks, routes):collection>", methods=["GET"])
async def list_entities(collection: str) -> Response:
    return jsonify(service().graph.list(_kind(collection)))


@blueprint.route("/<any(sources, sinks, routes):collection>", methods=["POST"])
async def create_entity(collection: str) -> Response:
    kind = _kind(collection)
    created = await service().graph.create(kind, await read_object())
    response = jsonify(created)
    response.status_code = 201
    response.headers["Location"] = f"/api/{collection}/{created['id']}"
    return response


@blueprint.route("/<any(sources, sinks, routes):collection>/<entity_id>", methods=["GET"])
async def get_entity(collection: str, entity_id: str) -> Response:
    return jsonify(service().graph.get(_kind(collection), entity_id))


@blueprint.route("/<any(sources, sinks, routes):collection>/<entity_id>", methods=["PATCH"])
async def update_entity(collection: str, entity_id: str) -> Response:
    kind = _kind(collection)
    return jsonify(await service().graph.update(kind, entity_id, await read_object()))


@blueprint.route("/<any(sources, sinks, routes):collection>/<entity_id>", methods=["DELETE"])
async def delete_entity(collection: str, entity_id: str) -> Response:
    await service().graph.delete(_kind(collection), entity_id)
    return Response("", status=204)
