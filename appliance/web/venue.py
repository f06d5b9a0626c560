"""``GET /venue``: every box on the LAN (``appliance.venue``) and its
channels, each with its QR code, so a venue with several rooms prints one
page; and ``GET /api/listen/box``, the small public JSON each box serves for
the others' venue pages (its name and, where its listen page would show
them, its channels). Both public: nothing here is more than the listen
pages show (a box with a PIN lists its name only, to anyone without it)."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from quart import Blueprint, Response, current_app, jsonify, render_template

from .auth import public
from .common import service
from .signs import listen_base, may_see_channels
from .ui import no_store, page_args, page_language

__all__ = ["blueprint"]

blueprint = Blueprint("venue", __name__)

BOX_FIELDS = ("id", "name", "language", "description")


@blueprint.route("/api/listen/box", methods=["GET"])
@public
async def this_box() -> Response:
    svc = service()
    allowed = may_see_channels()
    channels = [{k: c.get(k) for k in BOX_FIELDS} for c in svc.channels()] if allowed else []
    response = jsonify({"id": svc.venue_id, "name": current_app.appliance_config.name,
                        "pin": bool(current_app.admin_auth.listen_pin), "channels": channels})
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/venue", methods=["GET"])
@public
async def venue() -> Response:
    svc = service()
    base = listen_base()
    here: dict[str, Any] = {
        "name": current_app.appliance_config.name, "base": base,
        "pin": bool(current_app.admin_auth.listen_pin), "here": True,
        "channels": [{**{k: c.get(k) for k in BOX_FIELDS},
                      "url": f"{base}/listen/{quote(c['id'], safe='')}"}
                     for c in svc.channels()] if may_see_channels() else []}
    boxes = [here] + svc.venue_boxes()
    response = Response(await render_template("venue.html", **page_args(page_language(),
                                                                          boxes=boxes)))
    response.headers["Vary"] = "Accept-Language, Cookie"
    return no_store(response)
