"""Admin API: sources, sinks and routes (list, create, update, delete) and
the appliance's status. Changes are persisted atomically. See docs/API.md."""
from __future__ import annotations

from quart import Blueprint, Response, jsonify

from ..service import BadRequestError
from .common import read_json, service

__all__ = ["blueprint"]

blueprint = Blueprint("admin", __name__, url_prefix="/api")

KINDS = {"sources": "source", "sinks": "sink", "routes": "route"}


def _kind(collection: str) -> str:
    return KINDS[collection]


async def _object() -> dict:
    body = await read_json()
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body


@blueprint.route("/status", methods=["GET"])
async def status() -> Response:
    return jsonify(service().status())


@blueprint.route("/<any(sources, sinks, routes):collection>", methods=["GET"])
async def list_entities(collection: str) -> Response:
    return jsonify(service().list_entities(_kind(collection)))


@blueprint.route("/<any(sources, sinks, routes):collection>", methods=["POST"])
async def create_entity(collection: str) -> Response:
    kind = _kind(collection)
    svc = service()
    body = await _object()
    create = {"source": svc.create_source, "sink": svc.create_sink,
              "route": svc.create_route}[kind]
    created = await create(body)
    response = jsonify(created)
    response.status_code = 201
    response.headers["Location"] = f"/api/{collection}/{created['id']}"
    return response


@blueprint.route("/<any(sources, sinks, routes):collection>/<entity_id>", methods=["GET"])
async def get_entity(collection: str, entity_id: str) -> Response:
    return jsonify(service().get_entity(_kind(collection), entity_id))


@blueprint.route("/<any(sources, sinks, routes):collection>/<entity_id>", methods=["PATCH"])
async def update_entity(collection: str, entity_id: str) -> Response:
    kind = _kind(collection)
    body = await _object()
    return jsonify(await service().update_entity(kind, entity_id, body))


@blueprint.route("/<any(sources, sinks, routes):collection>/<entity_id>", methods=["DELETE"])
async def delete_entity(collection: str, entity_id: str) -> Response:
    await service().delete_entity(_kind(collection), entity_id)
    return Response("", status=204)
