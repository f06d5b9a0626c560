"""``GET /signs`` over HTTP: public, but with a venue PIN the channels only
for whoever has the PIN or the admin session; odd hosts never a 500."""
from __future__ import annotations

import socket

import pytest

from tests.web.conftest import ADMIN, make_config, open_server

pytestmark = pytest.mark.trio

DATA = {"name": "Nave & <Choir>",
        "sinks": [{"id": "main", "name": "Sermon <live>", "kind": "opus", "language": "de"}]}


async def test_signs_are_public_and_escape_what_they_show(tmp_path):
    async with open_server(make_config(tmp_path, data=DATA), headers={}) as server:
        r = await server.client.get("/signs", headers={"Accept-Language": "nl"})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert "Sermon &lt;live&gt;" in r.text and "Nave &amp; &lt;Choir&gt;" in r.text
        assert "<live>" not in r.text
        host = socket.gethostname().split(".")[0].lower()
        port = server.url.rsplit(":", 1)[1]
        assert f'data-url="http://{host}.local:{port}/listen/main"' in r.text
        assert '<html lang="nl"' in r.text and "Afdrukken" in r.text   # the reader's language
        assert 'class="sign" lang="de"' in r.text                    # the channel's language


async def test_with_a_pin_the_signs_show_channels_only_to_who_may_listen(tmp_path):
    config = make_config(tmp_path, data=DATA, listen_pin="4711")
    async with open_server(config, headers={}) as server:
        r = await server.client.get("/signs")
        assert r.status_code == 200
        assert "Sermon" not in r.text and 'class="sign"' not in r.text and "PIN" in r.text
        r = await server.client.get("/signs", headers=ADMIN)   # a bearer token is no session
        assert "Sermon" not in r.text
        assert (await server.client.post("/api/listen/pin", json={"pin": "4711"})).status_code == 204
        r = await server.client.get("/signs")
        assert "Sermon &lt;live&gt;" in r.text


@pytest.mark.parametrize("host", ["example.org:99999", "[::1]:abc", "x" * 300, "a:b:c", "%00", "[::1]"])
async def test_odd_hosts_never_break_the_signs(server, host):
    r = await server.client.get("/signs", headers={"Host": host})
    assert r.status_code in (200, 400), r.status_code
