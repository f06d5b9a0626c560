"""``/venue``: every box on the LAN and its channels. Two real appliances on
loopback see each other through the browse seam (``Venue.browse``: what
``avahi-browse`` would answer, here the other server's address and port;
the ``avahi-browse`` output itself is parsed by ``parse_browse``, tested on
real-format and hostile lines below). Hostile boxes are small trio servers
answering garbage, huge bodies, HTML, or nothing at all."""
from __future__ import annotations

import functools
import json
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
import trio

from appliance import venue as venue_module
from appliance.venue import (BOX_PATH, GONE_AFTER_S, REFRESH_S, SERVICE_TYPE, Announced,
                             parse_browse)
from tests.web.conftest import make_config, open_server



def announced(server, host: str = "") -> Announced:
    parts = urlsplit(server.url)
    return Announced(host, parts.hostname, parts.port)


def feed(server, *found: Announced) -> None:
    async def browse() -> list[Announced]:
        return list(found)
    server.service.venue.browse = browse


class Page(HTMLParser):
    """The boxes and channels a /venue page shows, and its QR codes' texts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.boxes: list[str] = []
        self.channels: list[str] = []
        self.qr: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-box" in a:
            self.boxes.append(a["data-box"])
        if "data-channel" in a:
            self.channels.append(a["data-channel"])
        if "data-url" in a:
            self.qr.append(a["data-url"])


@pytest.mark.trio
async def test_two_boxes_see_each_other_and_a_vanished_one_leaves(tmp_path):
    a_config = make_config(tmp_path / "a").replace(name="Hall A")
    b_config = make_config(tmp_path / "b").replace(name="Room B")
    async with open_server(a_config) as a:
        b_done = trio.Event()
        async with open_server(b_config) as b:
            await b.client.post("/api/sinks", json={"id": "fr", "name": "Français", "kind": "opus",
                                                    "language": "fr"})
            # each finds both (itself too, as avahi would), and lists the other once
            feed(a, announced(a), announced(b), announced(b, "room-b.local"))
            feed(b, announced(a), announced(b))
            await a.service.venue.refresh()
            await b.service.venue.refresh()
            page = Page((await a.client.get("/venue")).text)
            b_port = urlsplit(b.url).port
            assert len(page.boxes) == 2, page.boxes   # itself first, then B
            assert page.boxes[1] in (f"http://127.0.0.1:{b_port}", f"http://room-b.local:{b_port}")
            assert sorted(page.channels) == ["fr", "main", "main"]
            assert f"{page.boxes[1]}/listen/fr" in page.qr
            assert "Room B" in (await a.client.get("/venue")).text
            page_b = Page((await b.client.get("/venue")).text)
            assert len(page_b.boxes) == 2 and "Hall A" in (await b.client.get("/venue")).text
            # the JSON is public: no credential needed
            r = await a.client.get(BOX_PATH, headers={"Authorization": ""})
            assert r.status_code == 200 and r.json()["name"] == "Hall A"
        b_done.set()
        # B is gone: its address no longer answers; it leaves once its last
        # answer is older than GONE_AFTER_S (a minute at most with the refresh)
        assert REFRESH_S + GONE_AFTER_S < 60
        a.service.venue.by_address[next(iter(a.service.venue.by_address))].seen_at -= GONE_AFTER_S
        await a.service.venue.refresh()
        assert len(Page((await a.client.get("/venue")).text).boxes) == 1
        assert "Room B" not in (await a.client.get("/venue")).text


@pytest.mark.trio
async def test_a_box_with_a_pin_lists_its_name_but_not_its_channels(tmp_path):
    async with open_server(make_config(tmp_path / "a")) as a, \
            open_server(make_config(tmp_path / "b", listen_pin="4321").replace(name="Locked")) as b:
        r = await b.client.get(BOX_PATH, headers={"Authorization": ""})
        assert r.json()["pin"] is True and r.json()["channels"] == []
        feed(a, announced(b))
        await a.service.venue.refresh()
        html = (await a.client.get("/venue")).text
        assert "Locked" in html and "has a PIN" in html
        assert Page(html).channels == ["main"]   # A's own only


async def serve_raw(nursery, handler) -> int:
    """A TCP server on loopback whose every connection runs ``handler``."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


def http_answer(body: bytes, headers: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


@pytest.mark.trio
async def test_hostile_boxes_do_not_hold_or_break_the_page(tmp_path):
    evil_box = {"id": "evilbox123", "name": "<script>alert(1)</script>",
                "channels": [{"id": "x", "name": "<img src=x onerror=alert(2)>",
                              "language": '"><script>', "description": "</figure><b>"}]}
    bodies = {
        "html": http_answer(json.dumps(evil_box).encode()),
        "garbage": http_answer(b"\xff\x00not json"),
        "deep": http_answer(b"[" * 100000 + b"]" * 100000),
        "huge": http_answer(b"{" + b" " * (200 * 1024) + b"}"),
        "lying": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10 ** 6),
        "bad ids": http_answer(json.dumps({"id": "evilbox456", "name": "n",
                                           "channels": [{"id": "../../admin"}]}).encode()),
        "not a dict": http_answer(b"[1, 2, 3]"),
        "huge name": http_answer(json.dumps({"id": "evilbox789", "name": "n" * 10000}).encode()),
    }
    async with open_server(make_config(tmp_path)) as a, trio.open_nursery() as nursery:
        ports = {}
        for kind, body in bodies.items():
            async def answer(stream, body=body):
                await stream.receive_some(65536)
                try:
                    await stream.send_all(body)
                except trio.BrokenResourceError:
                    pass
            ports[kind] = await serve_raw(nursery, answer)

        async def hang(stream):
            await trio.sleep_forever()
        ports["hang"] = await serve_raw(nursery, hang)
        feed(a, *(Announced("", "127.0.0.1", port) for port in ports.values()),
             Announced("", "127.0.0.1", 1))   # nothing listens there
        with trio.fail_after(venue_module.FETCH_TIMEOUT_S + 3):   # the hanging one does not hold it
            await a.service.venue.refresh()
        with trio.fail_after(2):   # the page reads the last result, never the network
            html = (await a.client.get("/venue")).text
        page = Page(html)
        assert page.boxes[1:] == [f"http://127.0.0.1:{ports['html']}"], page.boxes
        assert "<script>alert" not in html and "<img src=x" not in html and "</figure><b>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert not re.search(r'lang="">', html)
        nursery.cancel_scope.cancel()


def test_avahi_browse_output_is_parsed_and_hostile_lines_are_dropped():
    good = (f'=;eth0;IPv4;Listening appliance on hall;{SERVICE_TYPE};local;hall.local;'
            f'192.168.1.5;80;"v=1" "path=/api/listen/box"').encode()
    lines = [
        good,
        good,                                                       # the same box twice
        b"+;eth0;IPv4;x;" + SERVICE_TYPE.encode() + b";local",      # not resolved
        f'=;eth0;IPv6;x;{SERVICE_TYPE};local;hall.local;fe80::1;80;"v=1"'.encode(),   # no scope
        f'=;eth0;IPv4;x;{SERVICE_TYPE};local;h.local;not-an-ip;80;"v=1"'.encode(),
        f'=;eth0;IPv4;x;{SERVICE_TYPE};local;h.local;10.0.0.2;99999;"v=1"'.encode(),
        '=;eth0;IPv4;x;_http._tcp;local;h.local;10.0.0.3;80;"v=1"'.encode(),   # another type
        f'=;eth0;IPv4;x;{SERVICE_TYPE};local;<b>evil</b>.local;10.0.0.4;8080;'
        f'"path=/x;rm -rf" "path=javascript:alert(1)" "{"A" * 100000}"'.encode(),
        f'=;eth0;IPv4;x;{SERVICE_TYPE};local;room\\0592.local;224.0.0.251;80;""'.encode(),
        b"\xff\xfe;garbage;" * 1000,
    ]
    found = parse_browse(b"\n".join(lines))
    assert found == [Announced("hall.local", "192.168.1.5", 80, "/api/listen/box"),
                     Announced("", "10.0.0.4", 8080, BOX_PATH)]
    many = b"\n".join(f'=;e;IPv4;x;{SERVICE_TYPE};local;h.local;10.1.{i // 256}.{i % 256};80;""'
                      .encode() for i in range(1000))
    assert len(parse_browse(many)) == venue_module.MAX_BOXES
