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


async def test_a_hotspot_with_a_passphrase_gets_a_wifi_join_code_on_every_sign(tmp_path):
    from appliance.web.signs import wifi_qr_text
    config = make_config(tmp_path, data=DATA, wifi_ssid='Nave "A"; 1', wifi_passphrase="pa:ss;w,rd\\x")
    async with open_server(config, headers={}) as server:
        r = await server.client.get("/signs", headers={"Accept-Language": "en"})
        assert r.status_code == 200
        # escaped per the WIFI: format, then for the HTML attribute
        text = 'WIFI:T:WPA;S:Nave \\&#34;A\\&#34;\\; 1;P:pa\\:ss\\;w\\,rd\\\\x;;'
        assert f'data-url="{text}"' in r.text, r.text
        assert 'class="sign with-wifi"' in r.text
        assert "Nave &#34;A&#34;; 1" in r.text      # named under its code, escaped
        # the listen code is still the first one on the sign, to plain HTTP
        port = server.url.rsplit(":", 1)[1]
        first = r.text.index('class="qr" data-url="')
        assert r.text[first:].startswith('class="qr" data-url="http://')
        assert f".local:{port}/listen/main" in r.text
        # over HTTPS (the admin page's button) the listen codes stay plain HTTP
        https = server.app.appliance_ports["https"]
        import httpx
        async with httpx.AsyncClient(verify=False, timeout=15) as secure:
            r = await secure.get(f"https://127.0.0.1:{https}/signs")
        assert f".local:{port}/listen/main" in r.text
    assert wifi_qr_text("a", "b") == "WIFI:T:WPA;S:a;P:b;;"
    assert wifi_qr_text('x\\;,:"', "y") == 'WIFI:T:WPA;S:x\\\\\\;\\,\\:\\";P:y;;'
    # an open hotspot (no passphrase): no join code, the old line instead
    async with open_server(make_config(tmp_path / "open", data=DATA, wifi_ssid="Open"),
                           headers={}) as server:
        r = await server.client.get("/signs")
        assert "WIFI:" not in r.text and 'class="wifi"' in r.text
