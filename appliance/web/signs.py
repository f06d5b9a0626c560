"""``GET /signs``: printable signs, one A4/Letter page per channel, with the
venue's name, the channel's name, a large QR code to
``http://<hostname>.local/listen/<channel>`` and that address in words, so
a listener joins without typing (or types what the sign says). Printed or
saved as PDF from the browser's print dialog; the admin page has a button
for it.

A public page (``auth.PUBLIC_ENDPOINTS``); when the appliance has a venue
PIN the channel list is listening data, so it is shown only to someone who
has the PIN's cookie or is logged in as admin, and each listen code carries
the PIN's long form (``#key=<venue key>``, ``AdminAuth.venue_key``): a
fragment, so it never reaches a server log, and unguessable, so it opens
the channel at once even while strangers spend the PIN's guess budget.
The signs speak each
channel's language when there is a catalogue for it, else the reader's.

On the appliance's own hotspot with a passphrase (``[server] wifi_ssid`` and
``wifi_passphrase``, written by first boot), each sign also carries a Wi-Fi
join code beside the listen code: ``WIFI:T:WPA;S:<ssid>;P:<passphrase>;;``,
which phone cameras offer to join. The passphrase is printed on the sign for
everyone in the room, so it is on the page too.
"""
from __future__ import annotations

import re
import socket
from typing import Any
from urllib.parse import quote, urlsplit

from quart import Blueprint, Response, current_app, render_template, request

from .auth import LISTEN_COOKIE, admin_session
from .common import service
from .ui import catalogue, no_store, page_args, page_language, supported, translate

__all__ = ["blueprint", "listen_base", "wifi_qr_text", "may_see_channels"]

blueprint = Blueprint("signs", __name__)


def listen_base() -> str:
    """``http://<hostname>.local[:port]``: the name the appliance announces
    over mDNS (avahi publishes the hostname), and the port it serves on
    (the configured one, or the one this request came to)."""
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    # the plain HTTP port (this page may have come over HTTPS)
    port: int | None = getattr(current_app, "appliance_ports", {}).get("http") \
        or current_app.appliance_config.server.port or None
    if port is None:
        try:
            port = urlsplit("//" + request.host).port
        except ValueError:
            port = None
    return f"http://{host or 'appliance'}.local" + (f":{port}" if port and port != 80 else "")


def wifi_qr_text(ssid: str, passphrase: str) -> str:
    """The Wi-Fi join code's text: ``WIFI:T:WPA;S:<ssid>;P:<passphrase>;;``,
    with ``\\ ; , : "`` escaped by a backslash in both fields (the format
    phone cameras read; ``T:WPA`` covers WPA2 and WPA3)."""
    def escape(text: str) -> str:
        return re.sub(r'([\\;,:"])', r"\\\1", text)
    return f"WIFI:T:WPA;S:{escape(ssid)};P:{escape(passphrase)};;"


def may_see_channels() -> bool:
    """What the listen page shows: open, or behind the PIN (its cookie or the admin)."""
    auth = current_app.admin_auth
    return (not auth.listen_pin or admin_session() is not None
            or auth.listen_proof_ok(request.cookies.get(LISTEN_COOKIE, "")))


@blueprint.route("/signs", methods=["GET"])
async def signs() -> Response:
    lang = page_language()
    base = listen_base()
    channels: list[dict[str, Any]] = []
    allowed = may_see_channels()
    server = current_app.appliance_config.server
    wifi = None
    if server.wifi_ssid and server.wifi_passphrase:
        wifi = {"ssid": server.wifi_ssid,
                "qr": wifi_qr_text(server.wifi_ssid, server.wifi_passphrase)}
    if allowed:
        # the code carries the PIN's long form: scanning needs no typing and
        # spends no guess budget (the printed address asks for the PIN)
        key = current_app.admin_auth.venue_key()
        for channel in service().channels():
            sign_lang = supported(channel["language"] or "") or lang
            url = f"{base}/listen/{quote(channel['id'], safe='')}"
            channels.append({**channel, "url": url, "qr": url + (f"#key={key}" if key else ""),
                             "sign_lang": sign_lang,
                             "dir": catalogue(sign_lang)["_dir"],
                             "say": {key: translate(sign_lang, key, ssid=server.wifi_ssid)
                                     for key in ("sign_scan", "sign_type", "sign_wifi",
                                                 "sign_wifi_join")}})
    response = Response(await render_template(
        "signs.html", **page_args(lang, channels=channels, allowed=allowed,
                                  wifi=wifi if allowed else None)))
    response.headers["Vary"] = "Accept-Language, Cookie"
    return no_store(response)
