"""Admin API: an update bundle uploaded and installed (docs/API.md,
"Updates"); the service's updater does the work (appliance.update)."""
from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from ..errors import InvalidError, UnsupportedMediaError
from .common import media_type, service

__all__ = ["blueprint"]

blueprint = Blueprint("update", __name__, url_prefix="/api")


@blueprint.route("/update", methods=["GET"])
async def update_status() -> Response:
    return jsonify(service().update_status())


@blueprint.route("/update", methods=["POST"])
async def install_update() -> Response:
    """The body is the .raucb itself, streamed to disk (web/streaming.py
    lets this route bound it); ``?reboot=no`` installs without the trial
    boot."""
    if media_type() != "application/octet-stream":
        raise UnsupportedMediaError("the body must be the .raucb file as "
                                    "application/octet-stream")
    reboot = request.args.get("reboot", "yes")
    if reboot not in ("yes", "no"):
        raise InvalidError("reboot must be yes or no")
    return jsonify(await service().install_update(
        request.body, length=request.content_length, reboot=reboot == "yes"))
