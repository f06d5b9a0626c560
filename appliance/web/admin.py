"""Admin API: sources, sinks and routes (list, create, update, delete) and
the appliance's status. Changes are persisted atomically. See docs/API.md."""
from __future__ import annotations

import time
from typing import Any

from quart import Blueprint, Response, current_app, jsonify, request

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


def _attachment(suffix: str) -> dict[str, str]:
    """Headers that make an answer a file to keep, named by the time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return {"Content-Disposition": f'attachment; filename="appliance-{stamp}.{suffix}"',
            "Cache-Control": "no-store"}


@blueprint.route("/backup", methods=["GET"])
async def download_backup() -> Response:
    """The settings as one file; the admin password's hash only with
    ``?include=password``."""
    auth = current_app.admin_auth
    with_password = request.args.get("include") == "password"
    response = jsonify(service().backup(auth.password_hash if with_password else None))
    response.headers.update(_attachment("json"))
    return response


@blueprint.route("/restore", methods=["POST"])
async def restore() -> Response:
    """A backup made the state (``?dry_run=1``: only what would change)."""
    dry_run = request.args.get("dry_run") in ("1", "true")
    backup = service().read_backup(await read_object())
    auth = current_app.admin_auth
    if backup.password_hash:   # before anything changes
        auth.check_hash_restorable()
    if dry_run:
        plan = service().restore_plan(backup)
    else:
        plan = await service().restore(backup)
        if backup.password_hash:
            auth.restore_hash(backup.password_hash)
    return jsonify({"dry_run": dry_run, "version": backup.version, "changes": plan,
                    "password": backup.password_hash is not None})


@blueprint.route("/clock", methods=["POST"])
async def set_clock() -> Response:
    """The box's clock set from the admin's browser (only while no network
    time keeps it): ``{"unix_ms": ...}``."""
    body = await read_object()
    return jsonify(service().set_clock(body))


@blueprint.route("/logs", methods=["GET"])
async def download_logs() -> Response:
    """The last hour of the appliance's log, as a file for support."""
    where, text = await service().last_hour_of_logs()
    return Response(text, content_type="text/plain; charset=utf-8",
                    headers={**_attachment("log"), "X-Appliance-Log": where})


@blueprint.route("/announcements", methods=["GET"])
async def announcements() -> Response:
    """The streams announced on the LAN (SAP): added only when the admin asks."""
    return jsonify(service().announced_streams())


@blueprint.route("/<any(sources, sinks, routes):collection>", methods=["GET"])
async def list_entities(collection: str) -> Response:
    return jsonify(service().entities(_kind(collection)))


@blueprint.route("/<any(sources, sinks, routes):collection>", methods=["POST"])
async def create_entity(collection: str) -> Response:
    kind = _kind(collection)
    body = await read_object()
    created = await service().create_entity(kind, body)
    response = jsonify(created)
    response.status_code = 201
    response.headers["Location"] = f"/api/{collection}/{created['id']}"
    return response


@blueprint.route("/<any(sources, sinks, routes):collection>/<entity_id>", methods=["GET"])
async def get_entity(collection: str, entity_id: str) -> Response:
    return jsonify(service().entity(_kind(collection), entity_id))


@blueprint.route("/<any(sources, sinks, routes):collection>/<entity_id>", methods=["PATCH"])
async def update_entity(collection: str, entity_id: str) -> Response:
    body = await read_object()
    return jsonify(await service().update_entity(_kind(collection), entity_id, body))


@blueprint.route("/<any(sources, sinks, routes):collection>/<entity_id>", methods=["DELETE"])
async def delete_entity(collection: str, entity_id: str) -> Response:
    await service().delete_entity(_kind(collection), entity_id)
    return Response("", status=204)
