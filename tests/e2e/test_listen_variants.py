"""Hearing variants on the listen page, on two phones in headless Chromium
against the real app: the same variant chosen by two pages is one engine
sink, a change reconnects with the new variant, and the sink goes when both
pages leave. The controls are in the listener's language and remembered."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.sessions import TEMP_PREFIX
from tests.e2e.phone import Phone, card, phone, problems, tap_listen, wait_playing  # noqa: F401
from tests.e2e.test_listen_phone import DATA, idle
from tests.web.conftest import make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
MONO = f"{TEMP_PREFIX}main~mono"


@pytest.fixture
async def venue(tmp_path):
    async with open_server(make_config(tmp_path, data=DATA)) as server:
        yield server


def variants(server) -> dict[str, int]:
    """Variant sinks in the engine, with how many sessions hold each."""
    sinks = {s for s in server.service.engine.sinks() if "~" in s}
    users = server.service.sessions.variant_users
    assert sinks == set(users), (sinks, users)
    return dict(users)


def set_balance(page, value: int) -> None:
    # what a finger on the slider does: input while it moves, change on release
    page.evaluate("""v => { const b = document.getElementById('balance'); b.value = String(v);
        b.dispatchEvent(new Event('input')); b.dispatchEvent(new Event('change')); }""", value)


async def test_a_variant_chosen_by_two_pages_is_one_sink_gone_when_both_leave(venue, phone):
    def join(p: Phone):
        pages = []
        for _ in range(2):
            page = p.open(venue.url + "/listen/main")
            page.tap("#mono")
            tap_listen(page)
            wait_playing(page)
            pages.append(page)
        return pages

    pages = await phone.call(join)
    assert variants(venue) == {MONO: 2}
    assert venue.service.engine.stats().listeners == 2

    def change(p: Phone):
        # one listener moves the balance: that page reconnects with the new variant
        page = pages[1]
        old = page.evaluate("applianceDebug.state('main').session")
        set_balance(page, -25)
        page.wait_for_function("s => applianceDebug.state('main').session && "
                               "applianceDebug.state('main').session !== s", arg=old)
        wait_playing(page)
        return (page.evaluate("applianceDebug.state('main').session"),
                page.inner_text("#balance-value"), page.evaluate("applianceDebug.hearing()"))

    session, shown, hearing = await phone.call(change)
    assert f"/api/whep/{TEMP_PREFIX}main~mono.bal-25/" in session
    assert shown == "25 % left"
    assert hearing == {"mono": True, "clear": False, "balance": -25}
    assert variants(venue) == {MONO: 1, f"{TEMP_PREFIX}main~mono.bal-25": 1}

    def remembered(p: Phone):
        # the settings stay with the browser: back on the page, they are still set
        page = pages[1]
        tap_listen(page)   # Stop
        page.wait_for_selector(f'{card("main")} .state[data-state="idle"]')
        page.reload()
        page.wait_for_function("() => window.applianceDebug && window.applianceDebug.ready")
        out = (page.evaluate("applianceDebug.hearing()"), page.is_checked("#mono"))
        return out

    hearing, checked = await phone.call(remembered)
    assert hearing == {"mono": True, "clear": False, "balance": -25} and checked
    assert variants(venue) == {MONO: 1}

    def leave(p: Phone):
        found = [problems(page) for page in pages]
        for page in pages:
            Phone.close(page)   # the page goes away: its DELETE goes with it
        return found

    found = await phone.call(leave)
    assert found == [[], []]
    await idle(venue)
    assert variants(venue) == {}


async def test_the_hearing_controls_and_meters_speak_the_listeners_language(venue, phone):
    def run(p: Phone):
        out = {}
        for locale in ("fr-FR", "ar-EG"):
            page = p.open(venue.url + "/listen/main", locale=locale)
            out[locale] = page.evaluate("""() => ({
                legend: document.querySelector('#hearing legend').innerText.trim(),
                clear: document.querySelector('[data-i18n="clear_speech"]').innerText.trim(),
                balance: document.getElementById('balance-value').innerText.trim(),
                sliderDir: getComputedStyle(document.getElementById('balance')).direction,
                clip: document.querySelector('.meter .clip').innerText.trim(),
                meter: document.querySelector('.meter').getAttribute('aria-label')})""")
            Phone.close(page)
        return out

    out = await phone.call(run)
    assert out["fr-FR"] == {"legend": "Audition", "clear": "Parole claire", "balance": "centre",
                            "sliderDir": "ltr", "clip": "SAT", "meter": "niveau de Floor"}
    ar = out["ar-EG"]
    # right to left, but the balance slider keeps left on the left
    assert ar["legend"] == "السمع" and ar["balance"] == "في الوسط" and ar["sliderDir"] == "ltr"
    assert ar["meter"] == "مستوى Floor"


# the docs' pictures (UPDATE_SCREENSHOTS=1 writes them): checked only that
# they are drawn, so with the slow suite
@pytest.mark.slow
async def test_a_screenshot_of_the_hearing_settings_on_a_phone(venue, phone, tmp_path):
    """UPDATE_SCREENSHOTS=1 writes it to docs/."""
    out = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path

    def shoot(p: Phone):
        page = p.open(venue.url + "/listen/main")
        page.tap("#clear")
        set_balance(page, 50)
        tap_listen(page)
        wait_playing(page)
        page.wait_for_timeout(1200)   # moving meters, a second stats sample
        path = out / "ui-listen-phone-hearing.png"
        page.screenshot(path=str(path), full_page=True)
        tap_listen(page)
        Phone.close(page)
        return path

    path = await phone.call(shoot)
    assert path.stat().st_size > 10_000
    await idle(venue)
