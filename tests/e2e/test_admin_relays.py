"""The admin page's relays panel, in headless Chromium against the real app
and a real Janus (Debian's, on loopback: mountpoints are made and fed; no
listener watches, tests/e2e/test_relay_page.py has those): a relay added
through the form comes up with its channel and viewers shown, its secret
never; a channel's "relays first" switch reaches the channel; a relay from
the config file is shown as such and cannot be removed here; Remove ends
the other."""
from __future__ import annotations

import pytest

from support import janus as janus_support
from support.janus import Janus
from tests.e2e.conftest import Browser, open_admin
from tests.web.conftest import make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser,
              pytest.mark.skipif(not janus_support.available(), reason="needs Debian's janus")]

ADMIN_KEY = "streaming-admin-key-0123"


async def test_the_admin_page_adds_shows_switches_and_removes_relays(tmp_path, browser):
    janus = Janus(tmp_path, admin_key=ADMIN_KEY)
    await janus.start()
    try:
        config = make_config(tmp_path / "box", data={"relays": [
            {"id": "fixed", "url": janus.url, "channels": ["main"], "admin_key": ADMIN_KEY}]})
        async with open_server(config) as box:
            def run(b: Browser) -> dict:
                page = open_admin(b, box.url)
                page.fill("#relay-id", "j1")
                page.fill("#relay-url", janus.url)
                page.select_option("#relay-channels", ["main"])
                page.fill("#relay-admin-key", ADMIN_KEY)
                page.select_option("#relay-srtp", "on")
                page.click('#relay-add button[type="submit"]')
                j1 = '[data-relay="j1"]'
                page.wait_for_selector(f'{j1} [data-relay-state="j1"]:text-matches("^up")',
                                       timeout=20000)
                page.wait_for_selector(f'{j1} [data-carried="main"]:has-text("0 viewers")')
                page.wait_for_selector('[data-relay="fixed"] [data-relay-state="fixed"]'
                                       ':text-matches("^up")', timeout=20000)
                seen = {"j1": page.inner_text(j1), "fixed": page.inner_text('[data-relay="fixed"]'),
                        "fixed_removable": page.is_visible('[data-remove-relay="fixed"]'),
                        "html": page.content()}
                with page.expect_response(lambda r: r.request.method == "PATCH"):
                    page.click('[data-relays-first="main"]')
                page.click('[data-remove-relay="j1"]')   # the dialog is accepted
                page.wait_for_selector(j1, state="detached")
                page.close()
                return seen

            seen = await browser.call(run)
            assert "SRTP on" in seen["j1"] and janus.url in seen["j1"]
            assert "config file" in seen["fixed"] and not seen["fixed_removable"]
            assert ADMIN_KEY not in seen["html"]
            assert box.service.graph.require("sink", "main").spec.relays_first
            assert [r["id"] for r in (await box.client.get("/api/relays")).json()] == ["fixed"]
            # j1's forward went with it; "fixed" keeps its own (the engine counts
            # forwards among its listeners)
            assert len(box.service.engine.listeners()) == 1
    finally:
        await janus.stop()
