"""The web UI's pages: ``/`` (listen), ``/listen/{sink}`` (one channel, what a
share link or a sign's QR code opens), ``/publish/{source}`` (a microphone
into a whip source) and ``/admin``. The pages are public;
the data they show comes from ``/api/...`` (the admin page logs in first; the
listen page asks for the venue PIN when one is set: see ``auth``). Static
files are served from ``appliance/static`` by the app itself (no CDN).

The listen page speaks the listener's language: the ``appliance_lang``
cookie (the page's language switch) or else the best of ``Accept-Language``
among the message catalogues in ``static/i18n/<lang>.json``; the same
catalogues give the page's own text here and its live text in the browser.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import trio
from quart import Blueprint, Response, current_app, render_template, request

from .. import __version__
from ..errors import NotFoundError
from .auth import public

__all__ = ["blueprint", "LANGUAGES", "catalogue", "page_language", "supported", "translate",
           "LANG_COOKIE", "no_store", "page_args"]

blueprint = Blueprint("ui", __name__)

I18N = Path(__file__).resolve().parent.parent / "static" / "i18n"
# Debian's libjs-janus-gateway (packages/run.txt): the listen page plays a
# Janus relay with it. Only this one file of the system's is served.
JANUS_JS = Path("/usr/share/javascript/janus-gateway/janus.js")
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "appliance_lang"


@functools.cache
def catalogue(lang: str) -> dict[str, Any]:
    """The messages of one language (read once; they ship with the code)."""
    return json.loads((I18N / f"{lang}.json").read_text(encoding="utf-8"))


# code -> its own name ("fr" -> "Français"), for the language switch
LANGUAGES: dict[str, str] = {p.stem: catalogue(p.stem)["_name"] for p in sorted(I18N.glob("*.json"))}


def supported(tag: str) -> str | None:
    """The catalogue for a language tag: exact ("pt") or by its primary
    subtag ("pt-BR" -> "pt"); None without one."""
    tag = tag.strip().lower()
    for candidate in (tag, tag.split("-")[0]):
        if candidate in LANGUAGES:
            return candidate
    return None


def page_language() -> str:
    """The page's language: the switch's cookie, else Accept-Language."""
    chosen = supported(request.cookies.get(LANG_COOKIE, ""))
    if chosen:
        return chosen
    # werkzeug sorts by quality; "*" and junk are skipped
    for tag, quality in request.accept_languages:
        found = supported(tag) if quality > 0 else None
        if found:
            return found
    return DEFAULT_LANGUAGE


def translate(lang: str, key: str, **values: Any) -> str:
    """One message (English when a catalogue lacks it), ``{name}`` filled."""
    text = catalogue(lang).get(key, catalogue(DEFAULT_LANGUAGE).get(key, key))
    if isinstance(text, dict):   # plural forms: the page picks; "other" here
        text = text["other"]
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def page_args(lang: str = DEFAULT_LANGUAGE, **extra: object) -> dict[str, object]:
    return {"name": current_app.appliance_config.name, "version": __version__, "lang": lang,
            "dir": catalogue(lang)["_dir"], "t": functools.partial(translate, lang), **extra}


def no_store(response: Response) -> Response:
    # the pages are tiny; always fetch the newest after an update
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _listen_page(focus: str | None) -> Response:
    lang = page_language()
    response = Response(await render_template(
        "listen.html", **page_args(lang, focus=focus, languages=json.dumps(LANGUAGES))))
    response.headers["Vary"] = "Accept-Language, Cookie"
    return no_store(response)


@blueprint.route("/", methods=["GET"])
async def listen() -> Response:
    return await _listen_page(None)


@blueprint.route("/listen/<sink_id>", methods=["GET"])
async def listen_one(sink_id: str) -> Response:
    return await _listen_page(sink_id)


@blueprint.route("/vendor/janus.js", methods=["GET"])
@public
async def janus_js() -> Response:
    """Janus's own client library, for listeners sent to a Janus relay; a
    404 that says why when the package is missing (the page then plays
    from the box)."""
    try:
        body = await trio.Path(JANUS_JS).read_bytes()
    except OSError:
        raise NotFoundError("libjs-janus-gateway is not installed on this appliance") from None
    return no_store(Response(body, content_type="text/javascript; charset=utf-8"))


@blueprint.route("/publish/<source_id>", methods=["GET"])
async def publish(source_id: str) -> Response:
    """An interpreter's page: the microphone into a whip source (WHIP). The
    token is checked when it publishes; the page itself reveals nothing."""
    return no_store(Response(await render_template("publish.html",
                                                   **page_args(), source=source_id)))


@blueprint.route("/admin", methods=["GET"])
async def admin() -> Response:
    return no_store(Response(await render_template("admin.html", **page_args())))
