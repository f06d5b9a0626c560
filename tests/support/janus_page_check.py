"""The listen page on a Janus relay, in Chromium (and Firefox ESR), in a
network namespace of the test's own (tests/e2e/test_relay_page.py starts
this under ``unshare -n``; see janus_check.py for why): a "relays first"
stereo channel (440 Hz on the left, 660 Hz on the right:
tests/support/ears.py), two Janus relays on d0 (10.98.0.1). The page plays a
relay with Debian's janus.js into a PulseAudio null sink, and each ear hears
its own side (Janus's offer and the page's answer carry stereo=1); the relay
is killed and the page is back on air from the other one, each ear still on
its side, saying "reconnecting" meanwhile. With ``--firefox``, Firefox ESR
then plays the relay left, and its ears are heard too. Prints JSON.

    unshare -n python tests/support/janus_page_check.py [--firefox]"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import trio  # noqa: E402

from support.janus import Janus  # noqa: E402
from support.janus_check import relay_status, run_in_namespace  # noqa: E402
from tests.e2e.conftest import Browser, Page, playwright_function  # noqa: E402
from tests.e2e.firefox import Firefox  # noqa: E402
from tests.support.audio_sim import PulseDaemon  # noqa: E402
from tests.support.ears import STEREO_CHANNEL, hear, stereo_file  # noqa: E402
from tests.web.conftest import make_config, open_server  # noqa: E402

# scripts for either browser (tests/e2e/conftest.Page): function bodies
WATCH = """window.__states = [];
const status = document.querySelector('.channel[data-sink="main"] .state');
new MutationObserver(() => window.__states.push([status.dataset.state, status.textContent]))
  .observe(status, { attributes: true, childList: true, characterData: true, subtree: true });"""
READY = "return !!(window.applianceDebug && applianceDebug.ready);"
LISTEN = "document.querySelector('.channel[data-sink=\"main\"] button.listen').click();"
# playing on a relay other than arguments[0]
ON_RELAY = """const s = window.applianceDebug.state('main');
const st = window.applianceDebug.stats('main');
return !!(s && s.state === 'playing' && !s.paused && s.relay && s.relay !== arguments[0]
  && st && st.packetsReceived > 10);"""
RELAY = "return applianceDebug.state('main').relay;"
# Janus's offer and the page's answer: an fmtp line with stereo=1 (not just
# sprop-stereo=1)
STEREO = """const pc = applianceDebug.cards.get('main').player.pc;
const stereo = /^a=fmtp:\\d+ (.*[;\\s])?stereo=1(;|\\s|$)/m;
return [stereo.test(pc.remoteDescription.sdp), stereo.test(pc.localDescription.sdp)];"""


def listen_on_relay(page: Page, socket: Path) -> dict:
    """The listen page (loaded) plays the channel, from a relay: where,
    what each ear hears, whether the SDPs ask for stereo."""
    page.until(READY)
    page.run(WATCH)
    page.run(LISTEN)
    page.until(ON_RELAY, None)
    offered, answered = page.run(STEREO)
    return {"relay": page.run(RELAY), "ears": hear(socket),
            "stereo_offered": offered, "stereo_answered": answered}


async def main(tmp: Path, with_firefox: bool) -> dict:
    relays = {name: Janus(tmp / name, ice="d0") for name in ("j1", "j2")}
    out: dict = {}
    pulse = PulseDaemon(tmp / "pulse")
    browser = firefox = None
    try:
        for janus in relays.values():
            await janus.start()
        pulse.start()
        browser = await trio.to_thread.run_sync(
            lambda: Browser(tmp / "chromium", pulse_server=f"unix:{pulse.socket}"))
        stereo_file(tmp / "box" / "media")
        async with open_server(make_config(tmp / "box", data=STEREO_CHANNEL)) as box:
            for name, janus in relays.items():
                r = await box.client.post("/api/relays", json={
                    "id": name, "url": janus.url, "channels": ["main"]})
                assert r.status_code == 201, r.text
                await relay_status(box, name, lambda s: s["state"] == "up")
            assert (await box.client.patch("/api/sinks/main", json={"relays_first": True})
                    ).status_code == 200

            def play(b: Browser) -> dict:
                b.page = b.new_page()
                b.page.goto(box.url + "/listen/main")
                return listen_on_relay(Page.chromium(b.page), pulse.socket)
            out["first"] = await browser.call(play)
            out["box_listeners"] = (await box.client.get("/api/status")).json()[
                "listeners"]["total"]
            lost = out["first"]["relay"]
            killed = time.monotonic()
            await relays[lost].stop()

            def back(b: Browser) -> dict:
                b.page.wait_for_function(playwright_function(ON_RELAY), arg=[lost],
                                         timeout=20000, polling=20)
                again = time.monotonic()
                page = Page.chromium(b.page)
                after = {"relay": page.run(RELAY), "at": again, "ears": hear(pulse.socket),
                         "states": page.run("return window.__states;")}
                b.page.close()      # silent: the speaker is Firefox's next
                return after
            after = await browser.call(back)
            out["failover_s"] = after.pop("at") - killed
            out["after"] = after
            # the box notices at its next health round (every 2 s)
            out["lost_state"] = (await relay_status(box, lost, lambda s: s["state"] != "up",
                                                    timeout=5))["state"]
            if with_firefox:
                # the relay left, in Firefox ESR (its output: the environment's)
                os.environ["PULSE_SERVER"] = f"unix:{pulse.socket}"
                firefox = await trio.to_thread.run_sync(
                    lambda: Firefox(str(tmp / "gecko.log"), full_volume=True))

                def play_firefox(f: Firefox) -> dict:
                    f.m.navigate(box.url + "/listen/main")
                    return listen_on_relay(Page.firefox(f), pulse.socket)
                out["firefox"] = await firefox.call(play_firefox)
    finally:
        if firefox is not None:
            await trio.to_thread.run_sync(firefox.close)
        if browser is not None:
            await trio.to_thread.run_sync(browser.close)
        pulse.stop()
        for janus in relays.values():
            await janus.stop()
    return out


if __name__ == "__main__":
    with_firefox = "--firefox" in sys.argv[1:]
    run_in_namespace(main, with_firefox, default_route=with_firefox)
