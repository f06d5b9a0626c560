"""What sources and sinks may open, read-only: ``/api/devices`` and
``/api/media``.

    GET /api/devices   {"capture": [{"id", "description", "direction"}, ...],
                        "playback": [...]}
    GET /api/media     {"folder": "<media folder>", "files": [{"path", "size"}, ...]}

A source or sink of kind "alsa" takes a ``device`` only from the first list
(appliance/devices.py); a file source takes a ``path`` only from the second
(appliance/media.py).
"""
from __future__ import annotations

from quart import Blueprint, Response, jsonify

from .common import service

__all__ = ["blueprint"]

blueprint = Blueprint("devices", __name__, url_prefix="/api")


@blueprint.route("/devices", methods=["GET"])
async def get_devices() -> Response:
    return jsonify(await service().alsa_devices())


@blueprint.route("/media", methods=["GET"])
async def get_media() -> Response:
    return jsonify(await service().media_files())
