"""The listen flow in a second browser engine: Debian's Firefox ESR, driven
through its built-in Marionette (PyPI ``marionette_driver``), headless,
against the real app: Listen plays (WHEP, the media element, packets), Stop
frees the listener, and a refused play() says "Tap to play" until a click
plays it.

Firefox ESR gathers no loopback ICE candidates (not even with
``media.peerconnection.ice.loopback``) and does not pair its own host
candidates with a loopback one, so here the appliance's ICE uses this
machine's own non-loopback address: packets between two local addresses
never leave the kernel (Linux routes them over ``lo``), so nothing goes on
the network. Host addresses are not hidden behind mDNS names, autoplay is
allowed (the refused case is made by the page's own play() being refused,
the same in both engines), and Firefox asks for French first. One Firefox
for the session (tests/e2e/conftest.py), owned by one worker thread.
"""
from __future__ import annotations

import dataclasses

import pytest
import trio

from tests.e2e.firefox import Firefox, local_address
from tests.web.conftest import IDLE, make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser]

@pytest.fixture
def config(tmp_path):
    address = local_address()
    if address is None:
        pytest.skip("no non-loopback local address: Firefox ESR gathers no loopback ICE candidates")
    config = make_config(tmp_path)
    return config.replace(engine=dataclasses.replace(config.engine, ice_addresses=(address,)))


STATE = "return window.applianceDebug && applianceDebug.state(arguments[0]);"
PLAYING = """const s = window.applianceDebug && applianceDebug.state(arguments[0]);
const st = s && applianceDebug.stats(arguments[0]);
return s && s.state === 'playing' && st && st.packetsReceived > 20 && !s.paused;"""


def open_page(f: Firefox, url: str) -> None:
    f.m.navigate(url)
    f.wait("return window.applianceDebug && applianceDebug.ready && "
           "document.querySelector('.channel button.listen') !== null;")


def click_listen(f: Firefox, sink: str = "main") -> None:
    from marionette_driver.by import By
    f.m.find_element(By.CSS_SELECTOR, f'.channel[data-sink="{sink}"] button.listen').click()


async def idle(server) -> None:
    with trio.fail_after(10):
        while server.service.census() != IDLE:
            await trio.sleep(0.05)


async def test_firefox_plays_a_channel_and_stop_frees_it(config, firefox):
    async with open_server(config) as server:
        def run(f: Firefox):
            open_page(f, server.url + "/listen/main")
            lang = f.js("return [document.documentElement.lang, "
                        "document.querySelector('.channel button.listen').innerText.trim()];")
            click_listen(f)
            f.wait(PLAYING, "main")
            state = f.js(STATE, "main")
            label = f.js("return document.querySelector('.channel button.listen').innerText.trim();")
            return lang, state, label

        lang, state, label = await firefox.call(run)
        assert lang == ["fr", "Écouter"]       # Firefox's Accept-Language, French
        assert state["state"] == "playing" and state["paused"] is False and state["session"]
        assert label == "Arrêter"
        assert server.service.listener_counts()["total"] == 1

        def stop(f: Firefox):
            click_listen(f)
            f.wait("return applianceDebug.state('main').state === 'idle';")
        await firefox.call(stop)
        await idle(server)


async def test_firefox_refused_autoplay_says_tap_to_play(config, firefox):
    async with open_server(config) as server:
        def run(f: Firefox):
            open_page(f, server.url + "/listen/main")
            f.js("""window.__refusePlay = true; window.__states = [];
                const realPlay = HTMLMediaElement.prototype.play;
                HTMLMediaElement.prototype.play = function () {
                  if (window.__refusePlay) return Promise.reject(new DOMException("not allowed", "NotAllowedError"));
                  return realPlay.call(this);
                };
                const s = document.querySelector('.channel[data-sink="main"] .state');
                new MutationObserver(() => __states.push(s.dataset.state)).observe(s, {attributes: true});""")
            click_listen(f)
            f.wait("const st = applianceDebug.stats('main'); return st && st.packetsReceived > 50;")
            blocked = f.js("""return {state: applianceDebug.state('main').state,
                paused: document.querySelector('audio[data-sink="main"]').paused,
                label: document.querySelector('.channel[data-sink="main"] button.listen').innerText.trim(),
                states: [...new Set(window.__states)]};""")
            f.js("window.__refusePlay = false;")
            click_listen(f)
            f.wait(PLAYING, "main")
            click_listen(f)
            f.wait("return applianceDebug.state('main').state === 'idle';")
            return blocked

        blocked = await firefox.call(run)
        assert blocked["state"] == "blocked" and blocked["paused"] is True, blocked
        assert blocked["label"] == "Touchez pour écouter"
        assert "playing" not in blocked["states"], blocked["states"]
        await idle(server)


def set_pref(f: Firefox, name: str, value: int) -> None:
    with f.m.using_context("chrome"):
        f.m.execute_script("Services.prefs.setIntPref(arguments[0], arguments[1]);",
                           script_args=[name, value])


async def test_firefox_own_autoplay_block_says_tap_to_play(config, firefox):
    """Firefox's own policy (media.autoplay.default = 1: audible autoplay
    blocked): Listen pressed from a script is no user gesture, so play() is
    refused; a real click plays."""
    async with open_server(config) as server:
        def run(f: Firefox):
            set_pref(f, "media.autoplay.default", 1)
            try:
                open_page(f, server.url + "/listen/main")
                f.js("document.querySelector('.channel button.listen').click();")
                f.wait("return applianceDebug.state('main').state === 'blocked';")
                f.wait("const st = applianceDebug.stats('main'); return st && st.packetsReceived > 50;")
                blocked = f.js("""return {state: applianceDebug.state('main').state,
                    paused: document.querySelector('audio[data-sink="main"]').paused,
                    label: document.querySelector('.channel button.listen').innerText.trim()};""")
                click_listen(f)
                f.wait(PLAYING, "main")
                click_listen(f)
                f.wait("return applianceDebug.state('main').state === 'idle';")
                return blocked
            finally:
                set_pref(f, "media.autoplay.default", 0)

        blocked = await firefox.call(run)
        assert blocked == {"state": "blocked", "paused": True, "label": "Touchez pour écouter"}
        await idle(server)
