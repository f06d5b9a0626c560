"""What the listen page needs besides WHEP, in the listening role (open, or
behind the venue PIN): ``GET /api/listen/channels`` (the channels: Opus
sinks, with their language, description and whether their sound source is
there), ``GET /api/listen/where/<channel>`` (a box or a Janus relay), ``GET /api/listen/events`` (listener counts, levels, the engine's
capture-to-send latency and source states as Server-Sent Events) and ``POST
/api/listen/pin`` (the PIN form: sets the listen cookie). The admin API
itself stays admin-only. See docs/API.md.
"""
from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, Response, current_app, jsonify, request

from ..errors import InvalidError, UnauthorizedError
from .auth import LISTEN_COOKIE, listening, public, retry_later
from .common import client_address, service
from .events import event_stream
from .login import read_fields, set_cookie

__all__ = ["blueprint"]

blueprint = Blueprint("listening", __name__, url_prefix="/api/listen")

@blueprint.route("/channels", methods=["GET"])
@listening
async def channels() -> Response:
    svc = service()
    return jsonify([{**c, "source": svc.channel_source_state(c["id"]),
                     "engine_latency_ms": svc.channel_latency_ms(c["id"])}
                    for c in svc.channels()])


MAX_AVOID = 200


@blueprint.route("/where/<sink_id>", methods=["GET"])
@listening
async def where(sink_id: str) -> Response:
    """Where the listen page plays a channel: ``{"box": true}`` (WHEP here)
    or ``{"janus": {"relay", "url", "mountpoint"}}`` (a Janus relay's
    streaming plugin); ``?avoid=<relay>`` leaves out the relay it just lost."""
    avoid = request.args.get("avoid")
    if avoid is not None and len(avoid) > MAX_AVOID:
        raise InvalidError(f"avoid: at most {MAX_AVOID} characters")
    response = jsonify(service().where_to_listen(sink_id, avoid))
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/events", methods=["GET"])
@listening
async def events() -> Response:
    """The admin stream narrowed to what a listener may see: listener counts
    and levels of the channels; with the levels, at most once a second, the
    engine's latency per channel; ``device`` (every channel's source
    state) when a device is lost or comes back."""
    svc = service()  # the stream outlives the request's app context
    cache: dict[str, Any] = {"at": float("-inf"), "ids": frozenset(), "latency_at": float("-inf")}

    def channel_ids(fresh: bool) -> frozenset[str]:
        # listing the sinks walks every session: for levels (20 a second) at
        # most once a second; listener changes (rare) always look again
        now = trio.current_time()
        if fresh or now - cache["at"] > 1.0:
            cache["at"], cache["ids"] = now, frozenset(c["id"] for c in svc.channels())
        return cache["ids"]

    def select(name: str, data: Any) -> Any:
        if name == "device":   # a device lost or back: every channel's source state
            return {"sinks": {i: svc.channel_source_state(i) for i in sorted(channel_ids(True))}}
        if name not in ("listeners", "levels"):
            return None
        ids = channel_ids(name == "listeners")
        sinks = {k: v for k, v in (data.get("sinks") or {}).items() if k in ids}
        if name == "levels" and not sinks:
            return None
        out: dict[str, Any] = {"sinks": sinks}
        now = trio.current_time()
        if name == "levels" and now - cache["latency_at"] >= 1.0:
            cache["latency_at"] = now
            out["latency_ms"] = {i: svc.channel_latency_ms(i) for i in sorted(ids)}
        return out

    return event_stream(select)


@blueprint.route("/pin", methods=["POST"])
@public
async def pin() -> Response:
    """The listen page's PIN form (or the venue key a sign's code carries):
    204 and the listen cookie when right."""
    fields = await read_fields("pin")
    auth = current_app.admin_auth
    if not auth.listen_pin:
        return Response("", status=204)  # nothing to prove
    address = client_address()
    budget = auth.guessable(fields["pin"])   # the venue key from a sign has none
    wait = auth.throttle.acquire(address, "PIN", budget=budget)
    if wait:
        raise retry_later(wait, "PINs")
    ok = auth.listen_secret_ok(fields["pin"])
    auth.throttle.release(address, ok, "PIN", budget=budget)
    if not ok:
        raise UnauthorizedError("wrong PIN", realm="listen", needs="pin")
    response = Response("", status=204)
    set_cookie(response, LISTEN_COOKIE, auth.listen_proof())
    return response
