"""The web UI's pages: ``/`` (listen), ``/listen/{sink}`` (one channel, what a
share link opens) and ``/admin``. The pages are public; the data they show
comes from ``/api/...`` (the admin page logs in first; the listen page asks
for the venue PIN when one is set: see ``auth``). Static files are served from
``appliance/static`` by the app itself (no CDN)."""
from __future__ import annotations

from quart import Blueprint, Response, current_app, render_template

from .. import __version__

__all__ = ["blueprint"]

blueprint = Blueprint("ui", __name__)


def _page_args(**extra: object) -> dict[str, object]:
    return {"name": current_app.appliance_config.name, "version": __version__, **extra}


def _no_store(response: Response) -> Response:
    # the pages are tiny; always fetch the newest after an update
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.route("/", methods=["GET"])
async def listen() -> Response:
    return _no_store(Response(await render_template("listen.html", **_page_args(focus=None))))


@blueprint.route("/listen/<sink_id>", methods=["GET"])
async def listen_one(sink_id: str) -> Response:
    return _no_store(Response(await render_template("listen.html", **_page_args(focus=sink_id))))


@blueprint.route("/admin", methods=["GET"])
async def admin() -> Response:
    return _no_store(Response(await render_template("admin.html", **_page_args())))
