"""The admin page sets what listeners see of a channel (its language and
description) and its alignment delay, in headless Chromium against the real
app; the server's refusal shows on the page."""
from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Browser, open_admin
from tests.support.webrtc import synthetic_offer
from tests.web.conftest import SDP

pytestmark = [pytest.mark.trio, pytest.mark.browser]


async def test_the_admin_page_sets_a_channels_language_description_and_delay(server, browser):
    def run(b: Browser):
        page = open_admin(b, server.url)
        form = '[data-settings="main"]'
        page.wait_for_selector(form)
        page.fill(f'{form} [data-field="language"]', "not a tag")
        page.click(f'{form} button[type="submit"]')
        page.wait_for_function("() => document.getElementById('error').textContent.includes('language')")
        refused = page.inner_text("#error")
        page.fill(f'{form} [data-field="language"]', "fr")
        page.fill(f'{form} [data-field="description"]', "Interprétation simultanée")
        page.fill(f'{form} [data-field="delay_ms"]', "120")
        page.click(f'{form} button[type="submit"]')
        page.wait_for_selector('[data-saved="main"]:has-text("Saved")')
        page.reload()
        page.wait_for_selector(form)
        shown = {f: page.input_value(f'{form} [data-field="{f}"]')
                 for f in ("language", "description", "delay_ms")}
        page.close()
        return refused, shown

    refused, shown = await browser.call(run)
    assert "BCP 47" in refused
    assert shown == {"language": "fr", "description": "Interprétation simultanée", "delay_ms": "120"}
    sink = server.service.graph.require("sink", "main").spec
    assert (sink.language, sink.description, sink.delay_ms) == ("fr", "Interprétation simultanée", 120)
    assert server.service.engine.sinks()["main"].delay_ms == 120



async def test_the_admin_page_makes_a_source_public(server, browser):
    """A source is heard on its own only by the admin until the admin page
    marks it public; then a stranger may listen to it."""
    stranger = httpx.AsyncClient(base_url=server.url)
    async with stranger:
        r = await stranger.post("/api/whep/source/tone", content=synthetic_offer(), headers=SDP)
        assert r.status_code == 403

        def toggle(b: Browser) -> bool:
            page = open_admin(b, server.url)
            box = '[data-public="tone"]'
            page.wait_for_selector(box)
            before = page.is_checked(box)
            with page.expect_response(lambda resp: resp.request.method == "PATCH"):
                page.click(box)
            page.close()
            return before

        assert await browser.call(toggle) is False
        assert server.service.graph.require("source", "tone").spec.public
        r = await stranger.post("/api/whep/source/tone", content=synthetic_offer(), headers=SDP)
        assert r.status_code == 201
        assert (await stranger.delete(r.headers["Location"])).status_code == 200
