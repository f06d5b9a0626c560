"""Stereo as the ears hear it: a channel with 440 Hz on the left and 660 Hz
on the right, played by the listen page in Chromium and in Firefox ESR into
a PulseAudio null sink whose monitor is recorded with left and right apart.
The plain channel keeps its sides, "Mono" puts both tones in both ears, and
the balance all the way left leaves the right ear silent.

Chromium decodes Opus in stereo only when its own offer asks for it
(``stereo=1``); before the page did, every channel played as mono there, and
the balance changed the level instead of the side."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Browser, Page
from tests.e2e.firefox import Firefox, local_address
from tests.support.ears import (LEFT_HZ, RIGHT_HZ, SEPARATION_DB, STEREO_CHANNEL,
                                each_side_in_its_own_ear, hear, stereo_file)
from tests.web.conftest import IDLE, make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser]

# What the page is asked to do and when it is done, the same script for both
# browsers: Chromium runs it through Playwright, Firefox through Marionette.
PLAYING = """const s = window.applianceDebug && applianceDebug.state('main');
const st = s && applianceDebug.stats('main');
return !!(s && s.state === 'playing' && st && st.packetsReceived > 50 && !s.paused);"""
LISTEN = "document.querySelector('.channel[data-sink=\"main\"] button.listen').click(); return true;"
SESSION = "return applianceDebug.state('main').session;"
MONO = "document.getElementById('mono').click(); return true;"
BALANCE = """const b = document.getElementById('balance'); b.value = String(arguments[0]);
b.dispatchEvent(new Event('input')); b.dispatchEvent(new Event('change')); return true;"""
NEW_SESSION = """const s = applianceDebug.state('main');
return !!(s.session && s.session !== arguments[0]);"""


def hear_variants(page: Page, url: str, socket: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}

    page.run(LISTEN)
    page.until(PLAYING)
    out["plain"] = hear(socket)
    old = page.run(SESSION)
    page.run(MONO)
    page.until(NEW_SESSION, old)
    page.until(PLAYING)
    out["mono"] = hear(socket)
    old = page.run(SESSION)
    page.run(MONO)              # mono off again, and the balance all the way left
    page.until(NEW_SESSION, old)
    old = page.run(SESSION)
    page.run(BALANCE, -100)
    page.until(NEW_SESSION, old)
    page.until(PLAYING)
    out["left only"] = hear(socket)
    page.run(LISTEN)            # Stop
    page.until("return applianceDebug.state('main').state === 'idle';")
    return out


def check(heard: dict[str, Any]) -> None:
    plain, mono, left = heard["plain"], heard["mono"], heard["left only"]
    assert each_side_in_its_own_ear(plain), heard
    # mono: both tones in both ears, alike
    for side in ("left", "right"):
        assert min(mono[side].values()) > -32, heard
        assert abs(mono[side][LEFT_HZ] - mono[side][RIGHT_HZ]) < 3, heard
    assert abs(mono["left"][LEFT_HZ] - mono["right"][LEFT_HZ]) < 1.5, heard
    # all the way left: the left ear as before, the right one silent
    assert left["left"][LEFT_HZ] > -25, heard
    assert left["left"][LEFT_HZ] - left["left"][RIGHT_HZ] > SEPARATION_DB, heard
    assert max(left["right"].values()) < left["left"][LEFT_HZ] - 40, heard


async def idle(server) -> None:
    with trio.fail_after(10):
        while server.service.census() != IDLE:
            await trio.sleep(0.05)


async def test_chromium_hears_each_side_in_its_own_ear(tmp_path, pulse):
    stereo_file(tmp_path / "media")
    async with open_server(make_config(tmp_path, data=STEREO_CHANNEL)) as server:
        browser = Browser(tmp_path / "profile", pulse_server=f"unix:{pulse.socket}")
        try:
            def run(b: Browser) -> dict[str, Any]:
                page = b.new_page()
                page.goto(server.url + "/listen/main")
                page.wait_for_function("() => window.applianceDebug && applianceDebug.ready")
                heard = hear_variants(Page.chromium(page), server.url, pulse.socket)
                page.close()
                return heard

            heard = await browser.call(run)
        finally:
            browser.close()
        await idle(server)
    check(heard)


async def test_firefox_hears_each_side_in_its_own_ear(tmp_path, firefox_sound):
    address = local_address()
    if address is None:
        pytest.skip("no non-loopback local address: Firefox ESR gathers no loopback ICE candidates")
    stereo_file(tmp_path / "media")
    config = make_config(tmp_path, data=STEREO_CHANNEL)
    config = config.replace(engine=dataclasses.replace(config.engine, ice_addresses=(address,)))
    # the session's Firefox, at full volume into its own daemon, whose sink we hear
    firefox, socket = firefox_sound.firefox, firefox_sound.pulse.socket
    async with open_server(config) as server:
        def run(f: Firefox) -> dict[str, Any]:
            f.m.navigate(server.url + "/listen/main")
            try:
                f.wait("return window.applianceDebug && applianceDebug.ready;")
                return hear_variants(Page.firefox(f), server.url, socket)
            finally:
                f.m.navigate("about:blank")   # ends the page's peer connection

        heard = await firefox.call(run)
        await idle(server)
    check(heard)
