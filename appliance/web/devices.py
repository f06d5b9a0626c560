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

import trio
from quart import Blueprint, Response, current_app, jsonify

from .. import devices, media

__all__ = ["blueprint"]

blueprint = Blueprint("devices", __name__, url_prefix="/api")


def _all_devices() -> dict[str, list[dict[str, str]]]:
    return {direction: [d.as_json() for d in devices.available_devices(direction)]
            for direction in devices.DIRECTIONS}


@blueprint.route("/devices", methods=["GET"])
async def get_devices() -> Response:
    # alsa-lib reads its configuration files: not on the event loop
    return jsonify(await trio.to_thread.run_sync(_all_devices))


@blueprint.route("/media", methods=["GET"])
async def get_media() -> Response:
    folder = media.media_folder(current_app.appliance_config)
    files = await trio.to_thread.run_sync(media.list_media, folder)
    return jsonify({"folder": str(folder), "files": [f.as_json() for f in files]})
