"""The publish page in headless Chromium: an interpreter's microphone (the
session browser's fake capture device playing a 587 Hz file, conftest.py)
published over WHIP into a whip source, heard by a real listener at the
tone's pitch; Stop ends it on the box. The admin page's whip sources and
publications, and a phone sent from a full box to its relay."""
from __future__ import annotations


import pytest
import trio

from tests.e2e.conftest import MICROPHONE_HZ, Browser, open_admin
from tests.web.conftest import IDLE, heard_hz, make_config, open_server
from tests.web.test_whip import add_booth, receiving

pytestmark = [pytest.mark.trio, pytest.mark.browser]


async def test_the_publish_page_puts_a_microphone_on_air_and_stop_ends_it(
        tmp_path, browser):
    async with open_server(make_config(tmp_path / "state")) as server:
        token = await add_booth(server)
        url = f"{server.url}/publish/booth#token={token}"

        def start(b: Browser):
            page = b.new_page()
            page.goto(url)
            # the token left the address bar; the microphone waits for the tap
            assert "token" not in page.evaluate("location.href")
            assert page.evaluate("applianceDebug.state()") == "idle"
            page.click("#start")
            page.wait_for_selector('#state[data-state="live"]', timeout=15000)
            page.wait_for_function("Number(document.getElementById('publish').dataset.peakDbfs) > -30",
                                   timeout=10000)
            return page

        page = await browser.call(start)
        publisher = server.service.publishers.by_source["booth"]
        await receiving(server)
        assert abs(await heard_hz(server, "/api/whep/fr") - MICROPHONE_HZ) < 3

        def stop(b: Browser):
            page.click("#stop")
            page.wait_for_selector('#state[data-state="idle"]')
            page.close()

        await browser.call(stop)
        with trio.fail_after(10):
            await publisher.done.wait()
        assert publisher.end_reason in ("deleted", "ice closed"), publisher.end_reason
        assert (await server.wait_idle()) == IDLE


async def test_a_wrong_token_is_shown_and_nothing_publishes(tmp_path, browser):
    async with open_server(make_config(tmp_path / "state")) as server:
        await add_booth(server)

        def attempt(b: Browser) -> str:
            page = b.new_page()
            page.goto(f"{server.url}/publish/booth")
            page.fill("#token", "w" * 32)
            page.click("#start")
            page.wait_for_selector('#state[data-state="error"]', timeout=15000)
            text = page.inner_text("#state")
            page.close()
            return text

        text = await browser.call(attempt)
        assert "401" in text and "publish token" in text
        assert server.service.publishers.by_source == {}
        assert (await server.wait_idle()) == IDLE


@pytest.mark.slow   # the API's own tests cover it; this is the admin page's form and links
async def test_the_admin_adds_a_whip_source_and_its_publish_link_puts_a_microphone_on_air(
        tmp_path, browser):
    """The admin page's form makes the source (the box makes its token); its
    Publish page link carries the token; a new token retires the old link."""
    async with open_server(make_config(tmp_path / "state")) as server:
        def add(b: Browser) -> str:
            admin = open_admin(b, server.url)
            admin.select_option("#net-kind", "whip")
            admin.fill("#net-id", "booth")
            admin.fill("#net-name", "Booth FR")
            admin.click('#net-add button[type="submit"]')
            admin.wait_for_selector('[data-publish-page="booth"]')
            link = admin.get_attribute('[data-publish-page="booth"]', "href")
            admin.close()
            return link

        link = await browser.call(add)
        token = (await server.client.get("/api/sources/booth")).json()["publish_token"]
        assert link == f"{server.url}/publish/booth#token={token}"
        r = await server.client.post("/api/routes", json={"id": "booth-main", "source_id": "booth",
                                                          "sink_id": "main", "gain_db": 0})
        assert r.status_code == 201, r.text
        await server.client.delete("/api/routes/tone-main")

        def publish(b: Browser):
            page = b.new_page()
            page.goto(link)
            page.click("#start")
            page.wait_for_selector('#state[data-state="live"]', timeout=15000)
            return page

        page = await browser.call(publish)
        await receiving(server)
        assert abs(await heard_hz(server, "/api/whep/main") - MICROPHONE_HZ) < 3

        def renew(b: Browser) -> str:
            admin = open_admin(b, server.url)
            admin.click('[data-renew-token="booth"]')   # the dialog is accepted
            admin.wait_for_function(f"() => !document.querySelector('[data-publish-page=\"booth\"]')"
                                    f".href.endsWith({token!r})")
            admin.close()
            page.click("#stop")
            page.close()
            return ""

        await browser.call(renew)
        new = (await server.client.get("/api/sources/booth")).json()["publish_token"]
        assert new != token and len(new) == 32
        r = await server.client.post("/api/whip/booth", content="v=0\r\n", headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})
        assert r.status_code == 401
        assert (await server.wait_idle()) == IDLE


@pytest.mark.slow   # tests/web/test_publications.py covers the API; this is the admin page
async def test_the_admin_publishes_a_channel_to_another_box_and_sees_it_live(
        tmp_path, browser):
    """The admin page's WHIP form: a wrong token shows the other box's
    refusal; the right one goes live; Stop ends it on the other box."""
    async with open_server(make_config(tmp_path / "b")) as b:
        token = await add_booth(b)
        async with open_server(make_config(tmp_path / "a")) as a:
            def publish(b_: Browser, publication_id: str, secret: str, state: str) -> str:
                admin = open_admin(b_, a.url)
                admin.fill("#pub-id", publication_id)
                admin.select_option("#pub-sink", "main")
                admin.fill("#pub-url", f"{b.url}/api/whip/booth")
                admin.fill("#pub-token", secret)
                admin.click('#pub-add button[type="submit"]')
                item = f'[data-publication="{publication_id}"]'
                admin.wait_for_function(
                    f"() => (document.querySelector('{item}') || {{textContent: ''}})"
                    f".textContent.includes({state!r})", timeout=20000)
                text = admin.inner_text(item)
                admin.close()
                return text

            text = await browser.call(publish, "wrong", "w" * 32, "401")
            assert "the server answered 401" in text and "publish token" in text
            assert (await a.client.delete("/api/publications/wrong")).status_code == 204
            text = await browser.call(publish, "to-b", token, "live")
            assert "main → " in text
            await receiving(b)

            def stop(b_: Browser) -> None:
                admin = open_admin(b_, a.url)
                admin.click('[data-stop-publication="to-b"]')
                admin.wait_for_selector('[data-publication="to-b"]', state="detached")
                admin.close()

            publisher = b.service.publishers.by_source["booth"]
            await browser.call(stop)
            with trio.fail_after(10):
                await publisher.done.wait()
            assert (await a.wait_idle()) == IDLE


async def test_a_phone_on_a_full_box_is_sent_to_the_relay_and_plays(tmp_path, browser):
    """Box A (room for one listener) publishes "main" to box B with B's WHEP
    address for overflow: the listen page on A, with A full, follows the 307
    to B, plays A's tone from B, and its Stop ends the session on B."""
    from tests.e2e.test_pages import open_listen, press_listen_and_wait
    from tests.support.webrtc import open_aiortc_listener

    async with open_server(make_config(tmp_path / "b")) as b:
        token = await add_booth(b)
        async with open_server(make_config(tmp_path / "a", max_listeners=1)) as a:
            r = await a.client.post("/api/publications", json={
                "id": "to-b", "sink_id": "main", "url": f"{b.url}/api/whip/booth",
                "token": token, "relay_whep_url": f"{b.url}/api/whep/fr"})
            assert r.status_code == 201
            with trio.fail_after(20):
                while (await a.client.get("/api/publications")).json()[0]["state"] != "live":
                    await trio.sleep(0.05)
            await receiving(b)
            async with open_aiortc_listener() as first:   # A is full
                r = await a.post_offer(await first.create_offer())
                assert r.status_code == 201
                await first.accept_answer(r.text)
                await first.wait_connected()

                def listen(b_: Browser):
                    page = open_listen(b_, f"{a.url}/listen/main")
                    press_listen_and_wait(page)
                    level = page.evaluate("applianceDebug.analyse('main', 600)")
                    return page, level

                page, level = await browser.call(listen)
                assert abs(level["frequencyHz"] - 440.0) < 5, level
                assert b.service.listener_counts()["sinks"]["fr"] == 1
                assert a.service.listener_counts()["sinks"]["main"] == 1   # the first only

                def stop(b_: Browser) -> None:
                    page.click('.channel[data-sink="main"] button.listen')
                    page.close()

                await browser.call(stop)
                with trio.fail_after(10):
                    while b.service.listener_counts()["sinks"]["fr"]:
                        await trio.sleep(0.05)
                await a.client.delete(r.headers["Location"])
            await a.client.delete("/api/publications/to-b")
            await a.wait_idle()
        await b.wait_idle()
