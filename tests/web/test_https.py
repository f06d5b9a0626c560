"""The admin side over HTTPS (issue 23, item 1): a passive capture of an
admin session holds none of its secrets, admin credentials sent over plain
HTTP from another machine are refused with the HTTPS address, the box's own
certificate is made once and reused, a venue's own certificate is used, and
the certificate's fingerprint is in the setup code's file, the log and the
API.

A client on "another machine" is a real non-loopback peer: the test server
listens on this machine's own non-loopback address and the client connects
to it, so the server sees that address as the peer (the kernel delivers it
over ``lo``, which is also where tcpdump captures it). 127.0.0.0/8 and ::1
are loopback, exempt by design (scripts on the box itself).
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import shutil
import signal
import ssl
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
import trio

from appliance import tls
from appliance.config import AdminConfig, ConfigError, parse_config
from tests.web.conftest import (
    ADMIN, ADMIN_PASSWORD, ADMIN_TOKEN, Server, make_config, open_server,
)

pytestmark = pytest.mark.trio


def pinned(certfile: Path) -> ssl.SSLContext:
    """A client context that trusts exactly this certificate (by its bytes,
    whatever name or address the test connects to)."""
    context = ssl.create_default_context(cafile=str(certfile))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def https_base(server: Server, host: str = "127.0.0.1") -> str:
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{server.app.appliance_ports['https']}"


async def served_fingerprint(host: str, port: int) -> str:
    """The SHA-256 of the certificate the server presents, as browsers show it."""
    return await trio.to_thread.run_sync(_served_fingerprint, host, port)


def _served_fingerprint(host: str, port: int) -> str:
    import socket
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as sock, \
            context.wrap_socket(sock) as tls_sock:
        der = tls_sock.getpeercert(binary_form=True)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def other_address() -> str:
    """This machine's own IPv4 address that is not loopback (skip without one)."""
    for address in tls.local_addresses():
        if ipaddress.ip_address(address).version == 4:
            return address
    pytest.skip("no non-loopback IPv4 address on this machine")


# --- the capture ---------------------------------------------------------------------

@asynccontextmanager
async def capture(path: Path, port: int) -> AsyncIterator[None]:
    """tcpdump on ``lo`` for TCP ``port``, from before the block until after
    it (every packet written as it comes)."""
    tcpdump = shutil.which("tcpdump") or shutil.which("/usr/bin/tcpdump")
    if tcpdump is None:
        pytest.skip("needs tcpdump (packages/test.txt)")
    # --immediate-mode: without it this kernel's packet ring handed tcpdump
    # nothing before it stopped (0 packets captured)
    process = subprocess.Popen([tcpdump, "-i", "lo", "-n", "--immediate-mode", "-U", "-s", "0",
                                "-w", str(path),
                                f"tcp port {port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        first = await trio.to_thread.run_sync(process.stderr.readline)
        if b"listening on" not in first:
            rest = await trio.to_thread.run_sync(process.stderr.read)
            process.wait(10)
            pytest.skip(f"tcpdump cannot capture here: {(first + rest).decode()[:200]}")
        yield
        await trio.sleep(0.3)   # the last packets reach the capture (no event tells)
    finally:
        process.send_signal(signal.SIGINT)
        await trio.to_thread.run_sync(process.wait, 10)
        process.stderr.close()


async def admin_session(client: httpx.AsyncClient) -> dict[str, str]:
    """Log in with the password, use the cookie and the CSRF token, use the
    bearer token, log out: what an admin does. Returns the secrets that
    travelled."""
    r = await client.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    csrf = r.json()["csrf"]
    cookie = r.cookies["appliance_admin"]
    assert (await client.get("/api/status")).status_code == 200
    assert (await client.get("/api/admin/session")).json()["csrf"] == csrf
    r = await client.patch("/api/sinks/main", json={"description": "captured?"},
                           headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    r = await client.get("/api/sinks", headers=ADMIN)
    assert r.status_code == 200
    assert (await client.post("/api/admin/logout")).status_code == 204
    return {"password": ADMIN_PASSWORD, "token": ADMIN_TOKEN, "cookie": cookie, "csrf": csrf}


async def test_a_capture_of_an_admin_session_over_https_holds_no_secret(tmp_path):
    async with open_server(make_config(tmp_path / "state"), headers={}) as server:
        cert = tmp_path / "state" / "tls" / "cert.pem"
        port = server.app.appliance_ports["https"]
        pcap = tmp_path / "https.pcap"
        async with capture(pcap, port):
            async with httpx.AsyncClient(base_url=https_base(server), verify=pinned(cert),
                                         timeout=15) as client:
                secrets = await admin_session(client)
        data = pcap.read_bytes()
        # the session is in the capture (TLS application data records)...
        assert data.count(b"\x17\x03\x03") >= 10 and len(data) > 5000, len(data)
        # ...and none of its secrets
        for name, value in secrets.items():
            assert value.encode() not in data, f"the {name} is readable in the capture"

        # The control: the same session over plain HTTP (allowed from
        # loopback only) shows every secret to the same capture.
        plain_pcap = tmp_path / "http.pcap"
        async with capture(plain_pcap, server.app.appliance_ports["http"]):
            async with httpx.AsyncClient(base_url=server.url, timeout=15) as client:
                secrets = await admin_session(client)
        data = plain_pcap.read_bytes()
        for name, value in secrets.items():
            assert value.encode() in data, f"the control capture missed the {name}"


# --- plain HTTP from another machine -------------------------------------------------

async def test_admin_credentials_over_plain_http_from_another_machine_are_refused(tmp_path):
    address = other_address()
    async with open_server(make_config(tmp_path / "state", host=address), headers={}) as server:
        assert server.url.startswith(f"http://{address}:")
        https = https_base(server, address)
        cert = tmp_path / "state" / "tls" / "cert.pem"
        async with httpx.AsyncClient(base_url=https, verify=pinned(cert), timeout=15) as secure:
            r = await secure.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
            assert r.status_code == 200
            set_cookie = r.headers["set-cookie"]
            assert "Secure" in set_cookie and "HttpOnly" in set_cookie
            cookie = r.cookies["appliance_admin"]
            assert (await secure.get("/api/status")).status_code == 200
            assert (await secure.get("/api/status", headers=ADMIN)).status_code == 200
            assert (await secure.get("/admin")).status_code == 200
            # listening works over HTTPS too
            assert (await secure.get("/api/listen/channels")).status_code == 200
            assert (await secure.get("/listen/main")).status_code == 200

        def refused(r: httpx.Response, path: str) -> None:
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert r.headers["X-Appliance-Auth"] == "https"
            assert r.headers["Location"] == https + path
            assert https + path in r.text and "only over HTTPS" in r.text
            assert "set-cookie" not in r.headers

        client = server.client   # plain HTTP, from this machine's LAN address
        refused(await client.post("/api/admin/login", json={"password": ADMIN_PASSWORD}),
                "/api/admin/login")
        refused(await client.post("/api/admin/setup", json={"code": "AAAA-BBBB-CCCC",
                                                           "password": "a new password"}),
                "/api/admin/setup")
        refused(await client.get("/api/admin/session"), "/api/admin/session")
        refused(await client.get("/api/status", headers=ADMIN), "/api/status")
        refused(await client.get("/api/status?x=1", headers={"Cookie": f"appliance_admin={cookie}"}),
                "/api/status?x=1")
        refused(await client.post("/api/sinks", json={"id": "x", "kind": "opus"}, headers=ADMIN),
                "/api/sinks")
        refused(await client.post("/api/admin/logout", headers={"Cookie": f"appliance_admin={cookie}"}),
                "/api/admin/logout")
        # the admin token is refused on listening routes as well (the PIN is not)
        refused(await client.get("/api/listen/channels", headers=ADMIN), "/api/listen/channels")
        r = await client.get("/admin?tab=1")
        assert r.status_code == 302 and r.headers["Location"] == https + "/admin?tab=1"
        # listening stays on plain HTTP
        for path in ("/", "/listen/main", "/api/listen/channels", "/healthz", "/signs",
                     "/static/listen.js"):
            assert (await client.get(path)).status_code == 200, path
        # nothing of that counted as a wrong guess
        assert len(server.app.admin_auth.throttle) == 0


async def test_loopback_clients_may_use_plain_http(server):
    r = await server.client.get("/api/status")
    assert r.status_code == 200
    r = await server.client.post("/api/admin/login", json={"password": ADMIN_PASSWORD})
    assert r.status_code == 200 and "Secure" not in r.headers["set-cookie"]
    assert (await server.client.get("/admin")).status_code == 200


async def test_the_pin_may_travel_over_plain_http_the_admin_token_may_not(tmp_path):
    address = other_address()
    config = make_config(tmp_path / "state", host=address, listen_pin="4321")
    async with open_server(config, headers={}) as server:
        client = server.client
        r = await client.get("/api/listen/channels", headers={"Authorization": "Bearer 4321"})
        assert r.status_code == 200
        r = await client.get("/api/listen/channels", headers=ADMIN)
        assert r.status_code == 403 and r.headers["X-Appliance-Auth"] == "https"
        r = await client.get("/api/listen/channels")
        assert r.status_code == 401 and r.headers["X-Appliance-Auth"] == "pin"


# --- the certificate ---------------------------------------------------------------------

def x509_text(certfile: Path) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(certfile), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout


async def test_the_certificate_is_made_once_and_reused(tmp_path, caplog):
    caplog.set_level(logging.INFO, "appliance")
    state = tmp_path / "state"
    config = make_config(state)
    async with open_server(config, own_certificate=True) as server:
        first = server.app.tls_fingerprint
        assert await served_fingerprint("127.0.0.1", server.app.appliance_ports["https"]) == first
    cert, key = state / "tls" / "cert.pem", state / "tls" / "key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert (key.parent.stat().st_mode & 0o777) == 0o700
    assert sorted(p.name for p in key.parent.iterdir()) == ["cert.pem", "key.pem"]  # no work left
    text = x509_text(cert)
    assert "ASN1 OID: prime256v1" in text and "CA:FALSE" in text
    assert "TLS Web Server Authentication" in text
    label = tls.host_label()
    assert f"Subject: CN = {label}.local" in text and f"DNS:{label}.local" in text
    for address in tls.local_addresses():
        assert address.upper().split("::")[0] in text.upper()
    before = (cert.read_bytes(), key.read_bytes(), cert.stat().st_mtime_ns)
    logged = [r.getMessage() for r in caplog.records if "HTTPS certificate" in r.getMessage()]
    assert len(logged) == 1 and "(made now)" in logged[0] and first in logged[0]
    caplog.clear()
    async with open_server(config) as server:
        assert server.app.tls_fingerprint == first
    assert (cert.read_bytes(), key.read_bytes(), cert.stat().st_mtime_ns) == before
    logged = [r.getMessage() for r in caplog.records if "HTTPS certificate" in r.getMessage()]
    assert len(logged) == 1 and "made now" not in logged[0] and first in logged[0]
    # a damaged pair is made again
    key.write_text("not a key\n")
    again = tls.load_certificate(state)
    assert again.made and again.fingerprint != first


async def test_a_configured_certificate_is_used(tmp_path):
    venue = tls.make_certificate(tmp_path / "venue", "venue-box", ["192.0.2.99"])
    state = tmp_path / "state"
    config = make_config(state, certfile=str(venue.certfile), keyfile=str(venue.keyfile))
    async with open_server(config) as server:
        assert server.app.tls_fingerprint == venue.fingerprint
        assert (await served_fingerprint("127.0.0.1", server.app.appliance_ports["https"])) \
            == venue.fingerprint
        r = (await server.client.get("/api/admin/session")).json()
        assert r["tls_fingerprint"] == venue.fingerprint
    assert not (state / "tls").exists(), "nothing made when one is configured"
    other = tls.make_certificate(tmp_path / "other", "other", [])
    with pytest.raises(ConfigError, match="not a readable PEM certificate and its private key"):
        tls.load_certificate(state, str(venue.certfile), str(other.keyfile))
    with pytest.raises(ConfigError, match="go together"):
        parse_config({"server": {"certfile": str(venue.certfile)}}, cards=[])


async def test_the_fingerprint_is_in_the_setup_file_and_the_api(tmp_path):
    config = make_config(tmp_path / "state", admin=AdminConfig())
    async with open_server(config, headers={}) as server:
        fingerprint = await served_fingerprint("127.0.0.1", server.app.appliance_ports["https"])
        assert server.app.tls_fingerprint == fingerprint
        text = (tmp_path / "state" / "setup-code.txt").read_text()
        assert fingerprint in text and "SHA-256" in text
        state = (await server.client.get("/api/admin/session")).json()
        assert state["tls_fingerprint"] == fingerprint
        assert state["https_url"] == f"{https_base(server)}/admin"
        assert state["listen_origin"] == server.url


async def test_https_port_must_differ_from_the_http_port():
    with pytest.raises(ConfigError, match="https_port"):
        parse_config({"server": {"port": 8080, "https_port": 8080}}, cards=[])
    config = parse_config({}, cards=[])
    assert (config.server.port, config.server.https_port) == (8080, 8443)
    assert dataclasses.replace(config.server, https_port=0).https_port == 0
