"""The HAT's ALSA controls over HTTP (appliance/hat_controls.py keeps them):

    GET   /api/mixer                    {"device", "available", "error", "controls": [...]}
    PATCH /api/mixer                    {"device": "hw:CARD=..."}: use another ctl device
    PATCH /api/mixer/controls/{name}    {"playback_volume": 80, "capture_switch": true, ...}

Every change is saved and restored when the appliance starts.
"""
from __future__ import annotations

from quart import Blueprint, Response, jsonify

from ..errors import InvalidError
from .common import read_json, service

__all__ = ["blueprint"]

blueprint = Blueprint("hat_controls", __name__, url_prefix="/api")


@blueprint.route("/mixer", methods=["GET"])
async def get_controls() -> Response:
    return jsonify(await service().hat_controls())


@blueprint.route("/mixer", methods=["PATCH"])
async def set_device() -> Response:
    body = await read_json()
    if not isinstance(body, dict) or set(body) != {"device"} or not isinstance(body["device"], str) \
            or not body["device"].strip():
        raise InvalidError('the body must be {"device": "<ALSA ctl name>"}')
    return jsonify(await service().use_hat_device(body["device"].strip()))


@blueprint.route("/mixer/controls/<name>", methods=["PATCH"])
async def set_control(name: str) -> Response:
    body = await read_json()
    if not isinstance(body, dict) or not body:
        raise InvalidError("the body must be a JSON object of changes")
    return jsonify(await service().set_hat_control(name, body))
