"""The listen page on phones (headless Chromium with a phone's viewport,
touch and language) against the real app: it keeps playing in the
background, sets the lock screen, says "Tap to play" when autoplay is
refused, says plainly when the browser has no WebRTC, speaks the listener's
language (Arabic right to left) and puts their channel first, and waits
kindly when the appliance is full."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import trio

from tests.e2e.phone import Phone, card, phone, problems, tap_listen, wait_playing  # noqa: F401
from tests.web.conftest import IDLE, make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
VENUE = "Lecture Hall A"
DATA = {
    "name": VENUE,
    "sources": [{"id": "tone", "kind": "tone"}],
    "sinks": [{"id": "main", "name": "Floor", "kind": "opus", "language": "en",
               "description": "The lectern, 440 Hz as spoken"},
              {"id": "fr", "name": "Français", "kind": "opus", "language": "fr",
               "description": "Interprétation simultanée"}],
    "routes": [{"id": "tone-main", "source_id": "tone", "sink_id": "main"},
               {"id": "tone-fr", "source_id": "tone", "sink_id": "fr", "gain_db": -6.0}],
}


async def idle(server) -> None:
    with trio.fail_after(10):
        while server.service.census() != IDLE:
            await trio.sleep(0.05)


@pytest.fixture
async def venue(tmp_path):
    async with open_server(make_config(tmp_path, data=DATA)) as server:
        yield server


async def test_hidden_page_keeps_playing_and_the_lock_screen_shows_the_channel(venue, phone):
    def run(p: Phone):
        page = p.open(venue.url + "/listen/fr")
        tap_listen(page, "fr")
        wait_playing(page, "fr")
        session = page.evaluate("""() => ({
            title: navigator.mediaSession.metadata && navigator.mediaSession.metadata.title,
            artist: navigator.mediaSession.metadata && navigator.mediaSession.metadata.artist,
            album: navigator.mediaSession.metadata && navigator.mediaSession.metadata.album,
            state: navigator.mediaSession.playbackState})""")
        # the page goes to the background (a locked phone, another app): the
        # browser says so to the page; nothing of ours may pause the element
        before = page.evaluate("applianceDebug.stats('fr').packetsReceived")
        page.evaluate("""() => {
            Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "hidden"});
            Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
            document.dispatchEvent(new Event("visibilitychange"));
            window.dispatchEvent(new Event("blur"));
        }""")
        page.wait_for_function(
            "n => applianceDebug.stats('fr').packetsReceived > n + 100", arg=before, timeout=5000)
        hidden = page.evaluate("""() => ({paused: document.querySelector('audio[data-sink="fr"]').paused,
            state: applianceDebug.state('fr').state, visibility: document.visibilityState})""")
        # the phone sleeps (the page frozen for a second) and wakes up
        cdp = page.context.new_cdp_session(page)
        cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
        page.wait_for_timeout(1000)
        cdp.send("Page.setWebLifecycleState", {"state": "active"})
        page.evaluate("""() => {
            Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "visible"});
            Object.defineProperty(document, "hidden", {configurable: true, get: () => false});
            document.dispatchEvent(new Event("visibilitychange"));
        }""")
        after = page.evaluate("applianceDebug.stats('fr').packetsReceived")
        page.wait_for_function(
            "n => applianceDebug.stats('fr').packetsReceived > n + 50", arg=after, timeout=5000)
        woke = page.evaluate("""() => ({paused: document.querySelector('audio[data-sink="fr"]').paused,
            state: applianceDebug.state('fr').state})""")
        # Stop from the lock screen's handler: the same as the button
        page.tap(f"{card('fr')} button.listen")
        page.wait_for_selector(f'{card("fr")} .state[data-state="idle"]')
        cleared = page.evaluate("[navigator.mediaSession.metadata, navigator.mediaSession.playbackState]")
        found = problems(page)
        Phone.close(page)
        return session, hidden, woke, cleared, found

    session, hidden, woke, cleared, found = await phone.call(run)
    assert session == {"title": "Français", "artist": VENUE,
                       "album": "Interprétation simultanée", "state": "playing"}
    assert hidden == {"paused": False, "state": "playing", "visibility": "hidden"}
    assert woke == {"paused": False, "state": "playing"}
    assert cleared == [None, "none"]
    assert found == []   # no errors, and never the microphone
    await idle(venue)


async def test_a_refused_autoplay_says_tap_to_play_until_a_tap_plays_it(venue, phone):
    # the browser refuses play() (as Firefox and Safari do when the gesture
    # is used up by the time the track arrives) until the listener taps again
    refuse = """
    window.__refusePlay = true;
    const realPlay = HTMLMediaElement.prototype.play;
    HTMLMediaElement.prototype.play = function () {
      if (window.__refusePlay) return Promise.reject(new DOMException("not allowed", "NotAllowedError"));
      return realPlay.call(this);
    };"""

    def run(p: Phone):
        page = p.open(venue.url + "/listen/main", init=refuse)
        # every state the page shows, in order
        page.evaluate("""() => { window.__states = [];
            const s = document.querySelector('.channel[data-sink="main"] .state');
            new MutationObserver(() => __states.push(s.dataset.state)).observe(s, {attributes: true}); }""")
        tap_listen(page)
        # connected and receiving: the moment the old page said "Playing"
        page.wait_for_function("() => (applianceDebug.stats('main') || {packetsReceived: 0}).packetsReceived > 50",
                               timeout=15000)
        page.wait_for_timeout(300)
        blocked = page.evaluate("""() => ({state: applianceDebug.state('main').state,
            paused: document.querySelector('audio[data-sink="main"]').paused,
            label: document.querySelector('.channel[data-sink="main"] button.listen').innerText.trim(),
            states: [...new Set(__states)]})""")
        page.evaluate("window.__refusePlay = false")
        tap_listen(page)
        wait_playing(page)
        played = page.evaluate("""() => ({state: applianceDebug.state('main').state,
            paused: document.querySelector('audio[data-sink="main"]').paused,
            label: document.querySelector('.channel[data-sink="main"] button.listen').innerText.trim(),
            session: applianceDebug.state('main').session})""")
        tap_listen(page)   # now it is Stop
        page.wait_for_selector(f'{card("main")} .state[data-state="idle"]')
        found = problems(page)
        Phone.close(page)
        return blocked, played, found

    blocked, played, found = await phone.call(run)
    assert blocked["state"] == "blocked" and blocked["paused"] is True, blocked
    assert blocked["label"] == "Tap to play"
    assert "playing" not in blocked["states"], blocked["states"]
    assert played["state"] == "playing" and played["paused"] is False and played["label"] == "Stop"
    assert found == []
    await idle(venue)


async def test_without_webrtc_the_page_says_which_browser_to_use(venue, phone):
    gone = "delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;"

    def run(p: Phone):
        page = p.open(venue.url + "/", init=gone, locale="de-DE")
        page.wait_for_selector("#notice:not([hidden])")
        notice = page.inner_text("#notice")
        button = page.locator(f'{card("main")} button.listen')
        disabled, label = button.is_disabled(), button.inner_text().strip()
        page.wait_for_timeout(300)
        found = problems(page)
        Phone.close(page)
        return notice, disabled, label, found

    notice, disabled, label, found = await phone.call(run)
    assert "WebRTC" in notice and "Firefox" in notice and "Safari" in notice
    assert "Dieser Browser" in notice   # in the listener's language
    assert disabled and label == "Hier nicht abspielbar"
    assert found == []


async def test_arabic_lays_out_right_to_left_and_french_comes_first_for_french(venue, phone):
    def run(p: Phone):
        out = {}
        page = p.open(venue.url + "/", locale="ar-EG")
        out["ar"] = page.evaluate("""() => {
            const c = document.querySelector('.channel');
            const box = c.getBoundingClientRect(), title = c.querySelector('h2').getBoundingClientRect();
            const badge = c.querySelector('.badge').getBoundingClientRect();
            return {dir: document.documentElement.dir, lang: document.documentElement.lang,
                    direction: getComputedStyle(document.body).direction,
                    titleAtRight: box.right - title.right < 40, badgeLeftOfTitle: badge.right <= title.left,
                    button: c.querySelector('button.listen').innerText.trim(),
                    count: c.querySelector('.badge').innerText.trim(),
                    englishDescriptionLtr: c.querySelector('.description').matches(':dir(ltr)'),
                    order: [...document.querySelectorAll('.channel')].map(x => x.dataset.sink)}; }""")
        Phone.close(page)
        # a Swedish phone: no Swedish catalogue (the page falls back to
        # English) and no Swedish channel, so no channel is "yours"
        page = p.open(venue.url + "/", locale="sv-SE")
        out["sv"] = page.evaluate("""() => [document.documentElement.lang,
            [...document.querySelectorAll('.channel')].map(x => x.dataset.suggested)]""")
        Phone.close(page)
        page = p.open(venue.url + "/", locale="fr-CA")
        out["fr"] = page.evaluate("""() => ({
            order: [...document.querySelectorAll('.channel')].map(x => x.dataset.sink),
            suggested: document.querySelector('.channel[data-sink="fr"] .suggested').innerText.trim(),
            language: document.querySelector('.channel[data-sink="fr"] .lang').innerText.trim(),
            button: document.querySelector('.channel button.listen').innerText.trim(),
            dir: document.documentElement.dir})""")
        # the switch: the page changes language at once and remembers it
        page.select_option("#language", "ar")
        page.wait_for_function("() => document.documentElement.dir === 'rtl'")
        out["switched"] = page.evaluate("document.querySelector('.channel button.listen').innerText.trim()")
        page.reload()
        page.wait_for_function("() => window.applianceDebug && window.applianceDebug.ready")
        out["remembered"] = page.evaluate("[document.documentElement.lang, document.documentElement.dir]")
        Phone.close(page)
        return out

    out = await phone.call(run)
    ar = out["ar"]
    assert (ar["dir"], ar["lang"], ar["direction"]) == ("rtl", "ar", "rtl")
    assert ar["titleAtRight"] and ar["badgeLeftOfTitle"], ar
    # "440 Hz tone" read "Hz tone 440": English text keeps its own direction
    assert ar["englishDescriptionLtr"], ar
    assert ar["button"] == "استمع" and ar["count"] == "لا مستمعين"
    assert ar["order"] == ["main", "fr"]   # no Arabic channel: the appliance's order
    assert out["sv"] == ["en", ["0", "0"]]
    fr = out["fr"]
    assert fr["order"] == ["fr", "main"] and fr["suggested"] == "Votre langue"
    assert fr["language"] == "français" and fr["button"] == "Écouter" and fr["dir"] == "ltr"
    assert out["switched"] == "استمع" and out["remembered"] == ["ar", "rtl"]


async def test_a_full_appliance_says_so_and_the_page_gets_in_when_a_slot_frees(tmp_path, phone):
    async with open_server(make_config(tmp_path, data=DATA, max_listeners=1)) as server:
        def first(p: Phone):
            page = p.open(server.url + "/listen/main")
            tap_listen(page)
            wait_playing(page)
            waiting = p.open(server.url + "/listen/main", locale="es-ES")
            tap_listen(waiting)
            waiting.wait_for_selector(f'{card("main")} .state[data-reason="full"]', timeout=10000)
            text = waiting.inner_text(f'{card("main")} .state')
            return page, waiting, text

        page, waiting, text = await phone.call(first)
        assert "lleno" in text and "volverá a intentarlo" in text
        assert server.service.listener_counts()["total"] == 1

        def free_a_slot(p: Phone):
            tap_listen(page)   # the first listener leaves
            # the waiting page gets in by itself (at once: the listener count
            # dropped; else after its Retry-After, at most ~6 s)
            wait_playing(waiting, timeout=15000)
            text = waiting.inner_text(f'{card("main")} .state')
            tap_listen(waiting)
            waiting.wait_for_selector(f'{card("main")} .state[data-state="idle"]')
            Phone.close(page)
            Phone.close(waiting)
            return text

        assert await phone.call(free_a_slot) == "Sonando"
        await idle(server)


async def test_after_the_appliance_restarts_the_page_says_so_and_comes_back(tmp_path, phone):
    config = make_config(tmp_path, data=DATA)
    async with open_server(config) as server:
        port = int(server.url.rsplit(":", 1)[1])

        def start(p: Phone):
            page = p.open(server.url + "/listen/main")
            tap_listen(page)
            wait_playing(page)
            return page

        page = await phone.call(start)
        await server.shutdown()
    stopped = trio.current_time()

    def noticed(p: Phone):
        page.wait_for_selector(f'{card("main")} .state[data-state="retrying"]', timeout=5000)
        return page.evaluate("applianceDebug.state('main').reason")

    reason = await phone.call(noticed)
    # no packet for 1.5 s (about 2 s on a quiet machine; the bound leaves room
    # for a busy one): not ICE's consent timeout, which took ~10 s
    assert trio.current_time() - stopped < 6.0
    assert reason in ("lost", "offline")
    # the same appliance again, on the same port
    async with open_server(config.replace(server=dataclasses.replace(config.server, port=port))) as server:
        def back(p: Phone):
            wait_playing(page, timeout=20000)
            tap_listen(page)
            page.wait_for_selector(f'{card("main")} .state[data-state="idle"]')
            Phone.close(page)
        await phone.call(back)
        await idle(server)


async def test_a_lost_source_and_silence_are_said_while_playing_goes_on(venue, phone):
    from appliance.events import DeviceLost, DeviceRestored

    def start(p: Phone):
        page = p.open(venue.url + "/listen/main", locale="it-IT")
        tap_listen(page)
        wait_playing(page)
        return page

    page = await phone.call(start)
    venue.service.feed._on_event(DeviceLost("source", "tone", "unplugged"))

    def lost(p: Phone):
        page.wait_for_selector(f'{card("main")} .notice[data-notice="source_lost"]', timeout=5000)
        return page.inner_text(f'{card("main")} .notice'), page.evaluate("applianceDebug.state('main').state")

    text, state = await phone.call(lost)
    assert text.startswith("La sorgente audio è scollegata") and state == "playing"
    venue.service.feed._on_event(DeviceRestored("source", "tone"))
    assert (await venue.client.patch("/api/routes/tone-main", json={"muted": True})).status_code == 200

    def quiet(p: Phone):
        page.wait_for_selector(f'{card("main")} .notice[data-notice=""]', state="attached", timeout=5000)
        page.wait_for_selector(f'{card("main")} .notice[data-notice="silent"]', timeout=8000)
        text = page.inner_text(f'{card("main")} .notice')
        tap_listen(page)
        Phone.close(page)
        return text

    assert await phone.call(quiet) == "In questo momento c’è silenzio su questo canale."
    await idle(venue)


# the docs' pictures (UPDATE_SCREENSHOTS=1 writes them): checked only that
# they are drawn, so with the slow suite
@pytest.mark.slow
async def test_screenshots_of_the_listen_page_on_a_phone_in_french_and_arabic(venue, phone, tmp_path):
    """UPDATE_SCREENSHOTS=1 writes them to docs/."""
    out = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path

    def shoot(p: Phone):
        files = []
        for lang, locale in (("fr", "fr-FR"), ("ar", "ar")):
            page = p.open(venue.url + "/", locale=locale)
            first = page.evaluate("document.querySelector('.channel').dataset.sink")
            tap_listen(page, first)
            wait_playing(page, first)
            page.wait_for_function(
                "s => document.querySelector(`.channel[data-sink=\"${s}\"] .stats .stat.delay`)", arg=first)
            page.wait_for_timeout(1200)   # moving meters, a second stats sample
            path = out / f"ui-listen-phone-{lang}.png"
            page.screenshot(path=str(path), full_page=True)
            files.append(path)
            tap_listen(page, first)
            Phone.close(page)
        return files

    for f in await phone.call(shoot):
        assert f.stat().st_size > 10_000
    await idle(venue)


async def test_the_venue_pin_is_asked_for_in_the_listeners_language(tmp_path, phone):
    async with open_server(make_config(tmp_path, data=DATA, listen_pin="2468")) as server:
        def run(p: Phone):
            asked = []
            page = p.open(server.url + "/listen/main", locale="de-DE",
                          on_dialog=lambda d: (asked.append(d.message), d.accept("2468")))
            tap_listen(page)
            wait_playing(page)
            tap_listen(page)
            page.wait_for_selector(f'{card("main")} .state[data-state="idle"]')
            Phone.close(page)
            return asked

        asked = await phone.call(run)
        assert asked == ["Dieser Ort verlangt eine PIN zum Zuhören.\nPIN eingeben:"]
        await idle(server)


async def test_a_signs_code_plays_without_the_pin_while_strangers_guess_at_it(tmp_path, phone):
    """The signs' codes carry the PIN's long form in the fragment: the page
    trades it for the listen cookie before anything else, asks nothing, and
    drops it from the address, even with the PIN's guess budget spent."""
    async with open_server(make_config(tmp_path, data=DATA, listen_pin="2468")) as server:
        auth = server.app.admin_auth
        for n in range(40):   # strangers spent the budget
            auth.throttle.acquire(f"127.3.0.{n}", "PIN")
            auth.throttle.release(f"127.3.0.{n}", False, "PIN")
        assert auth.throttle.acquire("127.3.1.1", "PIN") > 0

        def run(p: Phone):
            asked = []
            page = p.open(f"{server.url}/listen/main#key={auth.venue_key()}",
                          on_dialog=lambda d: (asked.append(d.message), d.dismiss()))
            tap_listen(page)
            wait_playing(page)
            address = page.evaluate("location.href")
            tap_listen(page)
            page.wait_for_selector(f'{card("main")} .state[data-state="idle"]')
            Phone.close(page)
            return asked, address

        asked, address = await phone.call(run)
        assert asked == [] and address == f"{server.url}/listen/main"
        await idle(server)


async def test_a_real_autoplay_refusal_in_chromium(venue):
    """Chromium's own policy this time (no simulation): Listen pressed from a
    script is no user gesture, so play() is refused; the page says "Tap to
    play", and a real tap plays."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, PHONE

    args = [a for a in CHROMIUM_ARGS if not a.startswith("--autoplay-policy")]
    args.append("--autoplay-policy=document-user-activation-required")

    def run():
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args,
                                         ignore_default_args=["--mute-audio"])
            try:
                context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
                # the page presses Listen itself once ready, and reports its
                # state on the console: no user activation from the test until
                # the tap (Playwright's evaluate() and waits count as a gesture)
                context.add_init_script("""const seen = new Set(); const t = setInterval(() => {
                    const d = window.applianceDebug;
                    if (!(d && d.ready)) return;
                    if (!seen.size) document.querySelector('.channel button.listen').click();
                    const st = d.stats('main'), key = d.state('main').state
                      + (st && st.packetsReceived > 50 ? '+packets' : '');
                    if (!seen.has(key)) { seen.add(key); console.log('state ' + key); }
                    if (key.endsWith('+packets')) clearInterval(t); }, 50);""")
                page = context.new_page()
                states = []
                page.on("console", lambda m: m.text.startswith("state ") and states.append(m.text))
                with page.expect_console_message(lambda m: m.text.endswith("+packets"), timeout=20000):
                    page.goto(venue.url + "/listen/main")
                blocked = page.evaluate("""() => ({state: applianceDebug.state('main').state,
                    paused: document.querySelector('audio[data-sink="main"]').paused,
                    label: document.querySelector('.channel button.listen').innerText.trim()})""")
                page.tap(f"{card('main')} button.listen")
                wait_playing(page)
                page.tap(f"{card('main')} button.listen")
                page.wait_for_selector(f'{card("main")} .state[data-state="idle"]')
                return blocked, states
            finally:
                browser.close()

    blocked, states = await trio.to_thread.run_sync(run)
    assert blocked == {"state": "blocked", "paused": True, "label": "Tap to play"}
    # what the page showed before the tap: never Playing
    assert states[-1] == "state blocked+packets", states
    assert not any("playing" in s for s in states), states
    await idle(venue)
