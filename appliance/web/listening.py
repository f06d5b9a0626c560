"""What the listen page needs besides WHEP, in the listening role (open, or
behind the venue PIN): ``GET /api/listen/channels`` (the channels: Opus
sinks), ``GET /api/listen/events`` (their listener counts and levels as
Server-Sent Events) and ``POST /api/listen/pin`` (the PIN form: sets the
listen cookie). The admin API itself stays admin-only. See docs/API.md.
"""
from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, Response, current_app, jsonify

from .auth import LISTEN_COOKIE, listening, public, retry_later
from .common import client_address, plain, service
from .events import event_stream
from .login import read_fields, set_cookie

__all__ = ["blueprint"]

blueprint = Blueprint("listening", __name__, url_prefix="/api/listen")

CHANNEL_FIELDS = ("id", "name", "kind", "listeners")


def _channels(svc: Any) -> list[dict[str, Any]]:
    return [{k: sink.get(k) for k in CHANNEL_FIELDS} for sink in svc.graph.list("sink")
            if sink.get("kind") == "opus" and not str(sink.get("id", "")).startswith("_")]


@blueprint.route("/channels", methods=["GET"])
@listening
async def channels() -> Response:
    return jsonify(_channels(service()))


@blueprint.route("/events", methods=["GET"])
@listening
async def events() -> Response:
    """The admin stream narrowed to what a listener may see: listener counts
    and levels of the channels."""
    svc = service()  # the stream outlives the request's app context
    cache: dict[str, Any] = {"at": float("-inf"), "ids": frozenset()}

    def channel_ids(fresh: bool) -> frozenset[str]:
        # listing the sinks walks every session: for levels (20 a second) at
        # most once a second; listener changes (rare) always look again
        now = trio.current_time()
        if fresh or now - cache["at"] > 1.0:
            cache["at"], cache["ids"] = now, frozenset(c["id"] for c in _channels(svc))
        return cache["ids"]

    def select(name: str, data: Any) -> Any:
        if name not in ("listeners", "levels"):
            return None
        ids = channel_ids(name == "listeners")
        sinks = {k: v for k, v in (data.get("sinks") or {}).items() if k in ids}
        if name == "levels" and not sinks:
            return None
        return {"sinks": sinks}

    return event_stream(select)


@blueprint.route("/pin", methods=["POST"])
@public
async def pin() -> Response:
    """The listen page's PIN form: 204 and the listen cookie when right."""
    fields = await read_fields("pin")
    if isinstance(fields, Response):
        return fields
    auth = current_app.admin_auth
    if not auth.listen_pin:
        return Response("", status=204)  # nothing to prove
    address = client_address()
    wait = auth.throttle.acquire(address)
    if wait:
        return retry_later(wait, "PINs")
    ok = auth.pin_ok(fields["pin"])
    auth.throttle.release(address, ok)
    if not ok:
        return plain("wrong PIN", 401, {"X-Appliance-Auth": "pin"})
    response = Response("", status=204)
    set_cookie(response, LISTEN_COOKIE, auth.listen_proof())
    return response
