"""The HAT's ALSA mixer over HTTP: ``/api/mixer``.

    GET   /api/mixer                    {"device", "available", "error", "controls": [...]}
    PATCH /api/mixer                    {"device": "hw:CARD=..."}: use another ctl device
    PATCH /api/mixer/controls/{name}    {"playback_volume": 80, "capture_switch": true, ...}

Every change is persisted (store section "mixer": the device and a snapshot
of every control) and restored when the app starts, so the HAT comes back
with the levels it had before a power cut. See appliance/mixer.py for the
shape of a control.
"""
from __future__ import annotations

import logging
from typing import Any

import trio
from quart import Blueprint, Response, current_app, jsonify

from .. import devices, mixer
from ..errors import InvalidError, NotFoundError
from .common import read_json, service

__all__ = ["blueprint", "SECTION", "DEFAULT_DEVICE"]

log = logging.getLogger(__name__)
blueprint = Blueprint("mixer", __name__, url_prefix="/api")

SECTION = "mixer"
DEFAULT_DEVICE = "default"


def _lock() -> trio.Lock:
    """One mixer conversation at a time (per app)."""
    lock = getattr(current_app, "_mixer_lock", None)
    if lock is None:
        lock = current_app._mixer_lock = trio.Lock()  # type: ignore[attr-defined]
    return lock


def _saved() -> dict[str, Any]:
    saved = service().store.section(SECTION) or {}
    return saved if isinstance(saved, dict) else {}


def _device() -> str:
    """The saved device, checked again: the state file is not trusted."""
    device = _saved().get("device")
    try:
        return devices.check_mixer_device(device)
    except InvalidError:
        return DEFAULT_DEVICE


async def _persist(device: str) -> list[dict[str, Any]]:
    """Save the device and its controls. Callers shield the change and this
    together: a client that leaves (Quart cancels its request) must not leave
    a change applied but not saved."""
    controls = await trio.to_thread.run_sync(mixer.list_controls, device)
    await service().store.save_section(SECTION, {"device": device,
                                                 "controls": mixer.snapshot(controls)})
    return controls


@blueprint.before_app_serving
async def restore_mixer() -> None:
    """Put back the persisted mixer settings (best effort: no card, no harm)."""
    svc = current_app.service
    if svc is None:
        return
    saved = svc.store.section(SECTION) or {}
    if not isinstance(saved, dict) or not isinstance(saved.get("controls"), dict):
        return
    try:
        device = devices.check_mixer_device(saved.get("device") or DEFAULT_DEVICE)
        problems = await trio.to_thread.run_sync(mixer.restore, device, saved["controls"])
    except Exception as error:  # never keep the appliance from starting
        log.error("mixer settings not restored: %s", error)
        return
    for problem in problems:
        log.warning("mixer restore: %s", problem)


@blueprint.route("/mixer", methods=["GET"])
async def get_mixer() -> Response:
    device = _device()
    async with _lock():
        try:
            controls = await trio.to_thread.run_sync(mixer.list_controls, device)
        except mixer.MixerError as error:
            return jsonify({"device": device, "available": False, "error": str(error),
                            "controls": []})
    return jsonify({"device": device, "available": True, "error": None, "controls": controls})


@blueprint.route("/mixer", methods=["PATCH"])
async def set_device() -> Response:
    body = await read_json()
    if not isinstance(body, dict) or set(body) != {"device"} or not isinstance(body["device"], str) \
            or not body["device"].strip():
        raise InvalidError('the body must be {"device": "<ALSA ctl name>"}')
    device = devices.check_mixer_device(body["device"].strip())
    async with _lock():
        try:
            with trio.CancelScope(shield=True):
                controls = await _persist(device)
        except mixer.MixerError as error:
            raise InvalidError(str(error)) from None
    return jsonify({"device": device, "available": True, "error": None, "controls": controls})


@blueprint.route("/mixer/controls/<name>", methods=["PATCH"])
async def set_control(name: str) -> Response:
    body = await read_json()
    if not isinstance(body, dict) or not body:
        raise InvalidError("the body must be a JSON object of changes")
    control_name, _, index_text = name.partition(",")
    try:
        index = int(index_text or 0)
    except ValueError:
        raise InvalidError(f"bad control {name!r}") from None
    device = _device()
    async with _lock():
        try:
            known = await trio.to_thread.run_sync(mixer.list_controls, device)
        except mixer.MixerError as error:
            raise NotFoundError(str(error)) from None
        if not any(c["name"] == control_name and c["index"] == index for c in known):
            raise NotFoundError(f"no mixer control {name!r}")
        with trio.CancelScope(shield=True):
            try:
                control = await trio.to_thread.run_sync(
                    mixer.write_control, device, control_name, body, index)
            except mixer.MixerError as error:
                raise InvalidError(str(error)) from None
            await _persist(device)
    return jsonify(control)
