"""Every box on the LAN and its channels, for one venue page (``/venue``).

Each box announces itself with DNS-SD, through the image's avahi-daemon
(a static service file): ``_appliance-listen._tcp`` on its HTTP port, with
two TXT strings, ``v=1`` and ``path=/api/listen/box``. The channels are not
in the TXT record: DNS-SD strings hold 255 bytes and a box may have dozens
of channels with names in any script, so the TXT stays small and fixed (the
service file never changes with the channels) and ``/venue`` asks each box
for its small public JSON (``GET /api/listen/box``: what its listen page
shows anyway, behind its PIN if it has one).

``Venue.run`` refreshes in the background every ``REFRESH_S``: browse
(``avahi-browse``, or the seam tests give), then every box's JSON at once,
each within ``FETCH_TIMEOUT_S`` and ``MAX_BODY_BYTES``. The page reads the
last result only, so a box that hangs or answers garbage never holds it. A
box leaves the list ``GONE_AFTER_S`` after its last good answer (avahi's
cache can keep a box that vanished without a goodbye for minutes: an
answer is the proof of life). Everything read from the network is hostile:
browse lines, TXT strings and JSON are bounded and checked (``model``'s
id and text checks); the page escapes what it shows; links are made here
(``http://<host>.local[:port]/listen/<id>``), never taken from a box.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import secrets
import shutil
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import httpx
import trio

from .errors import InvalidError
from .model import check_id, check_text
from .outbound import BodyTooLong, read_body

__all__ = ["Venue", "Announced", "Box", "parse_browse", "avahi_browse", "SERVICE_TYPE",
           "BOX_PATH"]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_appliance-listen._tcp"
BOX_PATH = "/api/listen/box"
REFRESH_S = 15.0
GONE_AFTER_S = 40.0          # with one refresh's delay, gone within a minute
FETCH_TIMEOUT_S = 2.0
BROWSE_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 64 * 1024
MAX_BOXES = 64
MAX_CHANNELS = 64
MAX_BROWSE_BYTES = 256 * 1024
_LOCAL_HOST = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.local")
_PATH = re.compile(r"/[A-Za-z0-9/_.-]{0,64}")


@dataclass(frozen=True)
class Announced:
    """One DNS-SD answer: where a box says it is."""
    host: str        # "<name>.local", or "" when the name was not one
    address: str     # an IP address literal
    port: int
    path: str = BOX_PATH


@dataclass
class Box:
    id: str
    name: str
    base: str                           # http://<host>[:port]
    channels: list[dict[str, Any]]
    pin: bool = False                   # its channels are behind its PIN
    seen_at: float = field(default=0.0)  # trio's clock, the last good answer

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "base": self.base, "pin": self.pin,
                "channels": self.channels}


def _unescape(text: str) -> str:
    """avahi-browse -p writes ``\\DDD`` (decimal) for odd bytes and ``\\.``, ``\\\\``."""
    return re.sub(r"\\(\d{3}|.)", lambda m: chr(int(m.group(1))) if m.group(1).isdigit()
                  else m.group(1), text)


def parse_browse(output: bytes) -> list[Announced]:
    """``avahi-browse -p -r -t`` output, hostile: only resolved lines (``=``)
    of our type with an address literal and a port, at most ``MAX_BOXES``."""
    found: list[Announced] = []
    seen: set[tuple[str, int]] = set()
    for raw in output[:MAX_BROWSE_BYTES].splitlines():
        line = raw.decode("utf-8", "replace")
        fields = line.split(";")
        if len(fields) < 10 or fields[0] != "=" or fields[4] != SERVICE_TYPE:
            continue
        host, address, port_text, txt = fields[6].lower(), fields[7], fields[8], ";".join(fields[9:])
        try:
            ip = ipaddress.ip_address(address)
            port = int(port_text)
        except ValueError:
            continue
        if not 0 < port < 65536 or ip.is_multicast or ip.is_unspecified \
                or (ip.version == 6 and ip.is_link_local):   # no scope id in the output
            continue
        path = BOX_PATH
        for string in re.findall(r'"((?:[^"\\]|\\.){0,300})"', txt[:4096]):
            string = _unescape(string)
            if string.startswith("path=") and _PATH.fullmatch(string[5:]):
                path = string[5:]
        key = (address, port)
        if key in seen:
            continue
        seen.add(key)
        found.append(Announced(host if _LOCAL_HOST.fullmatch(host) else "", address, port, path))
        if len(found) >= MAX_BOXES:
            break
    return found


async def avahi_browse() -> list[Announced]:
    """The boxes avahi knows now (``avahi-browse``, resolved, then it ends)."""
    program = shutil.which("avahi-browse")
    if program is None:
        return []
    with trio.move_on_after(BROWSE_TIMEOUT_S):
        done = await trio.run_process([program, "-p", "-r", "-t", "-k", SERVICE_TYPE],
                                      capture_stdout=True, capture_stderr=True, check=False)
        return parse_browse(done.stdout)
    log.warning("venue: avahi-browse took over %.0f s", BROWSE_TIMEOUT_S)
    return []


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def box_from(data: Any, announced: Announced) -> Box:
    """A box's JSON, checked: every field bounded, ids as ids, text as
    text; ``InvalidError`` otherwise."""
    if not isinstance(data, dict):
        raise InvalidError("not an object")
    box_id = data.get("id")
    if not isinstance(box_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", box_id):
        raise InvalidError("no box id")
    name = check_text(data.get("name"), "name", max_len=128)
    channels_in = data.get("channels", [])
    if not isinstance(channels_in, list):
        raise InvalidError("channels: not a list")
    host = announced.host or _url_host(announced.address)
    base = f"http://{host}" + (f":{announced.port}" if announced.port != 80 else "")
    channels = []
    for channel in channels_in[:MAX_CHANNELS]:
        if not isinstance(channel, dict):
            raise InvalidError("a channel is not an object")
        channel_id = check_id("sink", channel.get("id"), "channel id")
        channels.append({"id": channel_id,
                         "name": check_text(channel.get("name") or channel_id, "channel name",
                                            max_len=128),
                         "language": check_text(channel.get("language") or "", "language",
                                                max_len=35),
                         "description": check_text(channel.get("description") or "",
                                                   "description", max_len=512),
                         "url": f"{base}/listen/{quote(channel_id, safe='')}"})
    return Box(box_id, name, base, channels, pin=data.get("pin") is True)


Browse = Callable[[], Awaitable[list[Announced]]]


class Venue:
    """The other boxes, refreshed in the background (``run``); ``boxes()``
    never waits on the network."""

    def __init__(self, browse: Browse = avahi_browse) -> None:
        self.browse = browse
        self.id = secrets.token_urlsafe(12)   # this box's, to find itself in the list
        self.by_address: dict[tuple[str, int], Box] = {}
        self.refreshed = trio.Event()         # set after each refresh (tests)

    def boxes(self) -> list[Box]:
        return sorted(self.by_address.values(), key=lambda b: (b.name.casefold(), b.base))

    async def _fetch(self, client: httpx.AsyncClient, announced: Announced) -> None:
        host = _url_host(announced.address)
        url = f"http://{host}:{announced.port}{announced.path}"
        try:
            with trio.fail_after(FETCH_TIMEOUT_S):
                async with client.stream("GET", url) as response:
                    body = await read_body(response, MAX_BODY_BYTES, FETCH_TIMEOUT_S)
                    status = response.status_code
            if status != 200:
                return
            data = json.loads(body)
            box = box_from(data, announced)
        except (trio.TooSlowError, httpx.HTTPError, BodyTooLong, ValueError, InvalidError,
                RecursionError) as error:
            log.debug("venue: %s:%s not listed: %s", announced.address, announced.port,
                      type(error).__name__)
            return
        if box.id == self.id:
            return   # this box itself: the page shows its own channels from here
        box.seen_at = trio.current_time()
        self.by_address[(announced.address, announced.port)] = box

    async def refresh(self) -> None:
        try:
            found = (await self.browse())[:MAX_BOXES]
        except Exception as error:   # a broken browser must not end the refreshing
            log.warning("venue: browsing failed: %s", error)
            found = []
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                     timeout=FETCH_TIMEOUT_S) as client:
            async with trio.open_nursery() as nursery:
                for announced in found:
                    nursery.start_soon(self._fetch, client, announced)
        now = trio.current_time()
        for key, box in list(self.by_address.items()):
            if now - box.seen_at > GONE_AFTER_S:
                log.info("venue: %s (%s) left the list", box.name, box.base)
                del self.by_address[key]
        self.refreshed.set()
        self.refreshed = trio.Event()

    async def run(self, refresh_s: float = REFRESH_S) -> None:
        while True:
            await self.refresh()
            await trio.sleep(refresh_s)
