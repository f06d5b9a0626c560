"""The admin page's first-time setup, login and logout in headless Chromium
against the real app in its default configuration (no password yet)."""
from __future__ import annotations

import pytest

from appliance.admin_auth import normalise_code
from appliance.config import AdminConfig
from tests.e2e.conftest import Browser
from tests.web.conftest import make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser]


async def test_first_time_setup_with_the_code_then_logout_and_login(tmp_path, browser):
    config = make_config(tmp_path / "state", admin=AdminConfig())
    async with open_server(config, headers={}) as server:
        code_file = tmp_path / "state" / "setup-code.txt"
        code = normalise_code(code_file.read_text().splitlines()[0])

        def run(b: Browser):
            b.context.clear_cookies()
            page = b.new_page()
            page.goto(server.url + "/admin")
            page.wait_for_selector("#setup-form:not([hidden])")
            shown = {"app": page.is_visible("#app"), "file": page.inner_text("#setup-file")}
            # a wrong code first: the page says so and stays on the form
            page.fill("#setup-code", "AAAA-BBBB-CCCC")
            page.fill("#setup-password", "chosen password")
            page.fill("#setup-confirm", "chosen password")
            page.click('#setup-form button[type="submit"]')
            page.wait_for_function("() => document.getElementById('login-error').textContent")
            shown["wrong"] = page.inner_text("#login-error")
            page.fill("#setup-code", code.lower())
            page.click('#setup-form button[type="submit"]')
            page.wait_for_selector("#app:not([hidden])")
            page.wait_for_selector('[data-gain="tone-main"]')  # the API answers with the cookie
            cookies = {c["name"]: c for c in b.context.cookies(server.url)}
            page.click("#logout")
            page.wait_for_selector("#login-form:not([hidden])")
            page.fill("#login-password", "chosen password")
            page.click('#login-form button[type="submit"]')
            page.wait_for_selector('[data-gain="tone-main"]')
            page.close()
            b.context.clear_cookies()
            return shown, cookies

        shown, cookies = await browser.call(run)
        assert shown["app"] is False and shown["file"] == "setup-code.txt"
        assert "wrong setup code" in shown["wrong"]
        session = cookies["appliance_admin"]
        assert session["httpOnly"] and session["sameSite"] == "Strict" and not session["secure"]
        assert not code_file.exists()
        r = await server.client.post("/api/admin/setup",
                                     json={"code": code, "password": "another password"})
        assert r.status_code == 409


async def test_the_admin_page_over_https_with_the_box_certificate(tmp_path, browser):
    """Chromium trusting exactly the box's key (as an admin does who checked
    the fingerprint once): the page works over HTTPS, the cookie is Secure,
    the page shows the certificate's fingerprint, and the share link sends
    listeners to plain HTTP."""
    import base64
    import hashlib
    import subprocess

    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.web.conftest import ADMIN_PASSWORD
    async with open_server(make_config(tmp_path / "state"), headers={}) as server:
        cert = tmp_path / "state" / "tls" / "cert.pem"
        # the SHA-256 of the certificate's public key, as Chromium pins it
        pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"],
                             capture_output=True, check=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                             capture_output=True, check=True).stdout
        spki = base64.b64encode(hashlib.sha256(der).digest()).decode()
        https = f"https://127.0.0.1:{server.app.appliance_ports['https']}"

        def run(b: Browser):
            chromium = b._pw.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki}"])
            try:
                context = chromium.new_context()
                page = context.new_page()
                page.goto(https + "/admin")
                page.wait_for_selector("#login-form:not([hidden])")
                shown = {"login_fp": page.inner_text("#login-tls-fp")}
                page.fill("#login-password", ADMIN_PASSWORD)
                page.click('#login-form button[type="submit"]')
                page.wait_for_selector('[data-gain="tone-main"]')
                page.wait_for_selector('[data-fact^="https"]')
                shown["fact"] = page.inner_text('[data-fact^="https"] .v')
                page.wait_for_function("() => document.getElementById('share-link').textContent.includes('/listen/')")
                shown["share"] = page.inner_text("#share-link")
                shown["cookies"] = {c["name"]: c for c in context.cookies(https)}
                context.close()
                return shown
            finally:
                chromium.close()

        shown = await browser.call(run)
        fingerprint = server.app.tls_fingerprint
        assert shown["login_fp"] == fingerprint and shown["fact"] == fingerprint
        assert shown["share"] == f"{server.url}/listen/main"
        session = shown["cookies"]["appliance_admin"]
        assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
