"""The listen and admin pages in headless Chromium against the real app."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import trio

from tests.e2e.conftest import DESKTOP, PHONE, Browser, open_admin
from tests.web.conftest import IDLE, make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]


def open_listen(b: Browser, url: str, size=DESKTOP):
    page = b.new_page(size)
    page.goto(url)
    page.wait_for_selector('.channel[data-sink="main"] button.listen')
    return page


def press_listen_and_wait(page, sink: str = "main") -> None:
    page.click(f'.channel[data-sink="{sink}"] button.listen')
    page.wait_for_selector(f'.channel[data-sink="{sink}"] .state[data-state="playing"]', timeout=15000)
    # audio packets arrive (getStats, polled once a second by the page)
    page.wait_for_function(
        "s => (window.applianceDebug.stats(s) || {packetsReceived: 0}).packetsReceived > 30",
        arg=sink, timeout=10000)


async def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    """Poll something outside our control (a browser, a server census)."""
    with trio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(step)


async def test_listen_plays_the_tone_meters_move_and_stop_frees_the_listener(server, browser):
    url = server.url + "/"

    def start(b: Browser):
        page = open_listen(b, url)
        press_listen_and_wait(page)
        level = page.evaluate("applianceDebug.analyse('main', 600)")
        stats = page.evaluate("applianceDebug.stats('main')")
        settings = page.evaluate("applianceDebug.receiverSettings('main')")
        meter = page.locator('.channel[data-sink="main"] .meter')
        updates = int(meter.get_attribute("data-updates"))
        return page, level, stats, settings, updates

    page, level, stats, settings, updates = await browser.call(start)
    # the default graph: a 440 Hz tone at -12 dBFS peak (-15 dBFS RMS) into "main"
    assert abs(level["frequencyHz"] - 440.0) < 5.0, level
    assert -22.0 < level["rmsDbfs"] < -10.0, level
    assert stats["packetsReceived"] > 30 and stats["rttMs"] is not None
    assert settings and settings[0]["jitterBufferTarget"] == 0  # low latency is on by default
    status = (await server.client.get("/api/status")).json()
    assert status["listeners"]["sinks"]["main"] == 1

    def after_a_while(b: Browser, page):
        # the count (SSE) and the meters (SSE levels, ~20/s) update without polling
        page.wait_for_selector('.channel[data-sink="main"] .badge[data-count="1"]', timeout=5000)
        page.wait_for_timeout(1000)
        meter = page.locator('.channel[data-sink="main"] .meter')
        return int(meter.get_attribute("data-updates")), float(meter.get_attribute("data-rms")), \
            page.locator('.channel[data-sink="main"] .stats').inner_text()

    later, rms, stats_text = await browser.call(after_a_while, page)
    assert later - updates >= 10, "at least 10 level updates a second"
    assert -17.0 < rms < -13.0
    assert "round trip" in stats_text.lower() and "jitter" in stats_text.lower()
    assert "delay" in stats_text.lower()

    await browser.call(lambda b: page.click('.channel[data-sink="main"] button.listen'))

    async def idle():
        return server.service.census() == IDLE
    await wait_for(idle)
    status = (await server.client.get("/api/status")).json()
    assert status["listeners"]["total"] == 0

    def stopped(b: Browser):
        page.wait_for_selector('.channel[data-sink="main"] .badge[data-count="0"]', timeout=5000)
        text = page.locator('.channel[data-sink="main"] button.listen').inner_text()
        page.close()
        return text
    assert (await browser.call(stopped)).strip() == "Listen"


async def test_a_gain_change_in_the_admin_page_changes_the_level_heard(server, browser):
    def start(b: Browser):
        listen = open_listen(b, server.url + "/")
        press_listen_and_wait(listen)
        before = listen.evaluate("applianceDebug.analyse('main', 500)")
        admin = open_admin(b, server.url)
        admin.wait_for_selector('[data-gain="tone-main"]')
        gain = admin.locator('[data-gain="tone-main"]')
        gain.fill("-20")
        gain.dispatch_event("change")
        return listen, admin, before

    listen, admin, before = await browser.call(start)

    async def applied():
        return (await server.client.get("/api/routes/tone-main")).json()["gain_db"] == -20.0
    await wait_for(applied)

    def after(b: Browser):
        listen.wait_for_timeout(400)  # let the quieter audio reach the analyser
        level = listen.evaluate("applianceDebug.analyse('main', 500)")
        # the admin page's meters follow the change too
        admin.wait_for_function(
            "() => Number(document.querySelector('[data-sink=\"main\"] .meter').dataset.rms) < -30",
            timeout=5000)
        source_rms = float(admin.locator('[data-source="tone"] .meter').get_attribute("data-rms"))
        facts = admin.locator("#facts").inner_text()
        listen.click('.channel[data-sink="main"] button.listen')
        listen.close()
        admin.close()
        return level, source_rms, facts

    level, source_rms, facts = await browser.call(after)
    assert before["rmsDbfs"] - level["rmsDbfs"] == pytest.approx(20.0, abs=3.0), (before, level)
    assert abs(level["frequencyHz"] - 440.0) < 5.0
    assert -17.0 < source_rms < -13.0  # the source itself is unchanged
    assert "Uptime" in facts and "Xruns" in facts and "0.1.0" in facts
    await wait_for(lambda: _idle(server))


async def _idle(server) -> bool:
    return server.service.census() == IDLE


async def test_the_listen_page_reconnects_when_the_session_is_lost(server, browser):
    def start(b: Browser):
        page = open_listen(b, server.url + "/")
        press_listen_and_wait(page)
        return page, page.evaluate("applianceDebug.state('main').session")

    page, session = await browser.call(start)
    # the server ends the session under the page's feet (as after a reboot or
    # a network drop long enough for it to expire)
    path = "/" + session.split("/", 3)[3]
    assert (await server.client.delete(path)).status_code == 200

    def reconnected(b: Browser):
        page.wait_for_function(
            "old => { const s = applianceDebug.state('main'); return s.state === 'playing' && s.session && s.session !== old; }",
            arg=session, timeout=25000)
        page.wait_for_function(
            "() => (applianceDebug.stats('main') || {packetsReceived: 0}).packetsReceived > 30",
            timeout=10000)
        return page.evaluate("applianceDebug.analyse('main', 400)")

    level = await browser.call(reconnected)
    assert abs(level["frequencyHz"] - 440.0) < 5.0
    await browser.call(lambda b: (page.click('.channel[data-sink="main"] button.listen'), page.close()))
    await wait_for(lambda: _idle(server))


async def test_with_a_pin_the_listen_page_asks_for_it_and_listening_works(tmp_path, browser):
    async with open_server(make_config(tmp_path, listen_pin="4711"), headers={}) as server:
        assert (await server.client.get("/api/listen/channels")).status_code == 401

        def run(b: Browser):
            asked = []
            page = b.new_page(on_dialog=lambda d: (asked.append(d.message), d.accept("4711")))
            page.goto(server.url + "/")
            page.wait_for_selector('.channel[data-sink="main"] button.listen', timeout=10000)
            press_listen_and_wait(page)
            cookies = b.context.cookies(server.url)
            page.click('.channel[data-sink="main"] button.listen')
            page.close()
            return asked, cookies

        asked, cookies = await browser.call(run)
        assert asked and "PIN" in asked[0]
        proof = [c for c in cookies if c["name"] == "appliance_listen"]
        assert proof and proof[0]["httpOnly"] and proof[0]["sameSite"] == "Strict"
        assert "4711" not in proof[0]["value"]
        await wait_for(lambda: _idle(server))


SHOWCASE = {
    "name": "Lecture Hall A",
    "sources": [
        {"id": "lectern", "name": "Lectern mic", "kind": "tone", "tone_hz": 440.0},
        {"id": "interpreter", "name": "Interpreter booth", "kind": "tone", "tone_hz": 660.0,
         "tone_dbfs": -20.0},
    ],
    "sinks": [
        {"id": "main", "name": "Lecture (floor)", "kind": "opus"},
        {"id": "fr", "name": "Français", "kind": "opus"},
    ],
    "routes": [
        {"id": "lectern-main", "source_id": "lectern", "sink_id": "main"},
        {"id": "interpreter-fr", "source_id": "interpreter", "sink_id": "fr"},
        {"id": "lectern-fr", "source_id": "lectern", "sink_id": "fr", "gain_db": -18.0},
    ],
}


# the docs' pictures (UPDATE_SCREENSHOTS=1 writes them): checked only that
# they are drawn, so with the slow suite
@pytest.mark.slow
async def test_screenshots_of_both_pages(tmp_path, pulse, browser):
    """Desktop and phone screenshots; UPDATE_SCREENSHOTS=1 writes them to docs/."""
    out = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path

    def shoot(b: Browser, url: str):
        files = []
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page = open_listen(b, url + "/", size)
            press_listen_and_wait(page)
            page.wait_for_function(
                "() => document.querySelector('.channel[data-sink=\"main\"] .stats .stat')")
            page.wait_for_timeout(1200)  # moving meters, a second stats sample
            path = out / f"ui-listen-{label}.png"
            page.screenshot(path=str(path), full_page=True)
            files.append(path)
            admin = open_admin(b, url, size)
            admin.wait_for_selector('[data-gain="lectern-fr"]')
            admin.wait_for_selector("#share-qr svg")
            admin.wait_for_selector('[data-mixer="Master:playback_volume"]')
            admin.wait_for_timeout(800)
            path = out / f"ui-admin-{label}.png"
            admin.screenshot(path=str(path), full_page=True)
            files.append(path)
            admin.close()
            page.click('.channel[data-sink="main"] button.listen')
            page.close()
        return files

    async with open_server(make_config(tmp_path / "state", data=SHOWCASE)) as server:
        files = await browser.call(shoot, server.url)
        for f in files:
            assert f.stat().st_size > 10_000
        await wait_for(lambda: _idle(server))


async def test_the_share_link_and_qr_code_open_one_channel(tmp_path, browser):
    async with open_server(make_config(tmp_path / "state", data=SHOWCASE)) as server:
        def run(b: Browser):
            admin = open_admin(b, server.url)
            admin.wait_for_selector("#share-qr svg")
            admin.select_option("#share-sink", "fr")
            link = admin.locator("#share-qr").get_attribute("data-link")
            svg = admin.locator("#share-qr").inner_html()
            admin.close()
            page = b.new_page()
            page.goto(link)
            page.wait_for_selector('.channel[data-sink="fr"] button.listen')
            shown = page.eval_on_selector_all(".channel", "cs => cs.map(c => c.dataset.sink)")
            page.close()
            return link, svg, shown

        link, svg, shown = await browser.call(run)
        assert link == f"{server.url}/listen/fr"
        assert svg.startswith("<svg") and 'aria-label="QR code"' in svg
        assert shown == ["fr"]


async def test_the_latency_probe_sees_clicks_on_the_engine_clock(tmp_path, browser):
    """A short run of bench/browser_latency.py's measurement, so the benchmark
    keeps working: every click is found and the latency is plausible."""
    import sys
    sys.path.insert(0, str(ROOT / "bench"))
    import browser_latency

    config = make_config(tmp_path / "state", data=browser_latency.graph(10.0, 500))
    async with open_server(config) as server:
        result = await browser_latency.measure(server, browser, "low", seconds=4.0,
                                               interval_ms=500, warmup=2.0)
        await wait_for(lambda: _idle(server))
    for key in ("decode", "render"):
        assert result[key]["n"] >= 5, result
        assert 5.0 < result[key]["p50"] < 500.0, result
    assert result["receiver"][0]["jitterBufferTarget"] == 0


async def test_an_announced_stream_is_added_from_the_admin_page(tmp_path, browser):
    """A SAP announcement shows on the admin page (its name escaped, a
    stranger's text), and one click makes it an RTP source."""
    from tests.support.scream import free_udp_port
    from tests.support.sap import announcement, sdp

    port = free_udp_port()
    async with open_server(make_config(tmp_path / "state", sap_port=port)) as server:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.sendto(announcement(sdp("<b>Desk</b> ch 1-2")), ("127.0.0.1", port))
        out.close()

        def run(b: Browser):
            admin = open_admin(b, server.url)
            admin.wait_for_selector("[data-add-stream]")
            shown = admin.locator("#announced .item strong").inner_text()
            admin.click("[data-add-stream]")
            admin.wait_for_selector('[data-source="b-desk-b-ch-1-2"]')
            admin.close()
            return shown

        assert await browser.call(run) == "<b>Desk</b> ch 1-2"
        source = (await server.client.get("/api/sources/b-desk-b-ch-1-2")).json()
        assert (source["kind"], source["address"], source["port"]) == ("rtp", "239.69.1.10", 5004)


async def test_a_network_source_is_added_and_removed_from_the_admin_page(tmp_path, browser):
    """The form makes a Scream source (its fields) and an RTP source (a
    pasted SDP); a refused value is shown, not swallowed; Remove deletes."""
    from tests.support.scream import free_udp_port

    scream_port, rtp_port = free_udp_port(), free_udp_port()
    sdp = (f"v=0\no=- 1 1 IN IP4 127.0.0.1\ns=Desk\nc=IN IP4 239.69.1.10/32\nt=0 0\n"
           f"m=audio {rtp_port} RTP/AVP 97\na=rtpmap:97 L24/48000/2\n")
    async with open_server(make_config(tmp_path / "state")) as server:
        def run(b: Browser):
            admin = open_admin(b, server.url)
            admin.fill("#net-id", "pc")
            admin.fill("#net-name", "Lectern PC")
            admin.fill("#net-address", "127.0.0.1")
            admin.fill("#net-port", str(scream_port))
            admin.fill("#net-allow", "127.0.0.1, ::1")
            admin.click('#net-add button[type="submit"]')
            admin.wait_for_selector('[data-source="pc"]')
            admin.select_option("#net-kind", "rtp")
            admin.fill("#net-id", "desk")
            admin.fill("#net-sdp", sdp.replace("L24/48000/2", "G722/8000"))
            admin.click('#net-add button[type="submit"]')
            admin.wait_for_function("() => document.querySelector('#error').textContent.includes('sdp:')")
            admin.fill("#net-sdp", sdp)
            admin.click('#net-add button[type="submit"]')
            admin.wait_for_selector('[data-source="desk"]')
            tag = admin.locator('[data-source="desk"] .tag').inner_text()
            admin.click('[data-remove-source="pc"]')
            admin.wait_for_selector('[data-source="pc"]', state="detached")
            admin.close()
            return tag

        tag = await browser.call(run)
        assert "RTP L24/48000/2" in tag and "nothing received yet" in tag
        sources = {s["id"]: s for s in (await server.client.get("/api/sources")).json()}
        assert "pc" not in sources and sources["desk"]["address"] == "239.69.1.10"


async def test_a_backup_is_restored_from_the_admin_page_after_its_plan_is_shown(tmp_path, browser):
    async with open_server(make_config(tmp_path / "state")) as server:
        backup = (await server.client.get("/api/backup")).json()
        await server.client.delete("/api/routes/tone-main")
        path = tmp_path / "appliance-backup.json"
        path.write_text(json.dumps(backup))

        def run(b: Browser):
            admin = open_admin(b, server.url)
            asked = []
            admin.on("dialog", lambda d: (asked.append(d.message), d.accept()))
            admin.set_input_files("#restore", str(path))
            admin.wait_for_selector('[data-gain="tone-main"]')
            admin.close()
            return asked

        asked = await browser.call(run)
        assert len(asked) == 1 and "routes added: tone-main" in asked[0]
        assert (await server.client.get("/api/routes/tone-main")).status_code == 200


async def test_a_network_source_is_edited_from_the_admin_page(tmp_path, browser):
    """Edit fills the form with the source; Save sends what changed (a new
    port and buffer); the source is made again with its route."""
    from tests.support.scream import free_udp_port

    first, second = free_udp_port(), free_udp_port()
    async with open_server(make_config(tmp_path / "state")) as server:
        r = await server.client.post("/api/sources", json={
            "id": "pc", "kind": "scream", "address": "127.0.0.1", "port": first,
            "allow_from": ["127.0.0.1"]})
        assert r.status_code == 201
        assert (await server.client.post("/api/routes", json={
            "id": "pc-main", "source_id": "pc", "sink_id": "main"})).status_code == 201

        def run(b: Browser):
            admin = open_admin(b, server.url)
            admin.click('[data-edit-source="pc"]')
            assert admin.input_value("#net-port") == str(first)
            assert admin.input_value("#net-allow") == "127.0.0.1"
            admin.fill("#net-port", str(second))
            admin.fill("#net-latency", "35")
            admin.click("#net-submit")
            admin.wait_for_function("() => document.querySelector('#net-submit').textContent === 'Add source'")
            admin.close()

        await browser.call(run)
        source = (await server.client.get("/api/sources/pc")).json()
        assert (source["port"], source["latency_ms"], source["allow_from"]) == (second, 35, ["127.0.0.1"])
        assert (await server.client.get("/api/routes/pc-main")).status_code == 200
