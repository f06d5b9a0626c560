"""The hotspot's captive-portal redirect: a phone's probe for another host
gets the listen page; the appliance's own names and addresses are served."""
from __future__ import annotations

import socket

import pytest
import trio

from appliance.web.captive import is_own_host, own_names
from tests.web.conftest import make_config, open_server


@pytest.mark.parametrize("host, own", [
    ("box", True), ("BOX.local.", True), ("box.local:8080", True), ("localhost", True),
    ("10.42.0.1", True), ("10.42.0.1:80", True), ("[fe80::1]", True), ("[::1]:8080", True),
    ("", True),
    ("captive.apple.com", False), ("connectivitycheck.gstatic.com:80", False),
    ("box.example.net", False), ("xbox", False), ("10.42.0.1.evil", False),
])
def test_own_hosts(host, own):
    assert is_own_host(host, own_names("box")) is own


async def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(5):
            while not data.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
    return data


@pytest.mark.trio
async def test_probes_for_other_hosts_are_sent_to_the_listen_page(tmp_path):
    config = make_config(tmp_path, captive_redirect="http://10.42.0.1/")
    async with open_server(config) as server:
        client = server.client
        for host, path in (("captive.apple.com", "/hotspot-detect.html"),
                           ("connectivitycheck.gstatic.com", "/generate_204"),
                           ("www.msftconnecttest.com", "/connecttest.txt")):
            r = await client.get(path, headers={"Host": host})
            assert r.status_code == 302 and r.headers["Location"] == "http://10.42.0.1/"
            assert r.headers["Cache-Control"] == "no-store" and r.content == b""
        # before authentication: the admin API is not reached at all
        r = await client.post("/api/sources", json={}, headers={"Host": "evil.example"})
        assert r.status_code == 302
        # the appliance's own names and addresses are served as ever
        for host in (f"{socket.gethostname()}.local", "127.0.0.1"):
            r = await client.get("/healthz", headers={"Host": host})
            assert r.status_code == 200 and r.text.strip() == "ok"
        # HTTP/1.0 without a Host
        head = await raw_request(server.url, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")


@pytest.mark.trio
async def test_off_the_hotspot_any_host_name_is_served(tmp_path):
    async with open_server(make_config(tmp_path)) as server:
        r = await server.client.get("/healthz", headers={"Host": "captive.apple.com"})
        assert r.status_code == 200
