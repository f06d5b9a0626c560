"""The HAT mixer (pyalsaaudio) against a private PulseAudio daemon: the admin
page shows and sets its controls, the settings persist and come back at
start."""
from __future__ import annotations

import json

import alsaaudio
import pytest
import trio

from tests.e2e.conftest import Browser, open_admin
from tests.support.audio_sim import use_asoundrc
from tests.web.conftest import make_config, open_server

pytestmark = pytest.mark.trio


def master() -> list[int]:
    m = alsaaudio.Mixer("Master", device="hat")
    try:
        return m.getvolume()
    finally:
        m.close()


def set_master(percent: int) -> None:
    m = alsaaudio.Mixer("Master", device="hat")
    try:
        m.setvolume(percent)
    finally:
        m.close()


async def test_mixer_api_reads_writes_and_validates(tmp_path, pulse):
    async with open_server(make_config(tmp_path / "state")) as server:
        body = (await server.client.get("/api/mixer")).json()
        assert body["available"] and body["device"] == "default"
        names = {c["name"]: c for c in body["controls"]}
        assert set(names) == {"Master", "Capture"}
        assert "volume" in names["Master"]["playback"] and "mute" in names["Master"]["playback"]
        assert "volume" in names["Capture"]["capture"]

        r = await server.client.patch("/api/mixer/controls/Capture", json={"capture_volume": 35})
        assert r.status_code == 200, r.text
        assert r.json()["capture"]["volume"] == [35]
        r = await server.client.patch("/api/mixer/controls/Master", json={"playback_mute": True})
        assert r.json()["playback"]["mute"] == [True, True]
        for bad in ({"playback_volume": 101}, {"capture_volume": 10}, {"nope": 1}, {"enum": "x"}):
            r = await server.client.patch("/api/mixer/controls/Master", json=bad)
            assert r.status_code == 400, (bad, r.text)
        assert (await server.client.patch("/api/mixer/controls/Nope",
                                          json={"playback_volume": 5})).status_code == 404
        assert (await server.client.patch("/api/mixer", json={"device": "hat"})).status_code == 200
        assert (await server.client.patch("/api/mixer", json={"device": "nope"})).status_code == 400
        assert (await server.client.get("/api/mixer")).json()["device"] == "hat"
        saved = await saved_mixer(tmp_path / "state")
        assert saved["device"] == "hat"
        assert saved["controls"]["Capture"]["capture_volume"] == [35]


@pytest.mark.browser
async def test_the_admin_page_sets_the_mixer_and_it_is_restored_at_start(tmp_path, pulse, browser):
    state = tmp_path / "state"
    async with open_server(make_config(state)) as server:
        def move_master(b: Browser):
            page = open_admin(b, server.url)
            slider = page.locator('[data-mixer="Master:playback_volume"]')
            slider.wait_for()
            slider.evaluate("(el) => { el.value = '40'; el.dispatchEvent(new Event('input')); }")
            return page

        page = await browser.call(move_master)
        with trio.fail_after(10):
            while master() != [40, 40]:  # the page debounces, then PATCHes
                await trio.sleep(0.05)
        await browser.call(lambda b: page.close())
        saved = await saved_mixer(state)
        assert saved["controls"]["Master"]["playback_volume"] == [40, 40]

    set_master(90)  # someone (or a reboot) changed it
    async with open_server(make_config(state)) as server:
        assert master() == [40, 40]  # restored before serving
        body = (await server.client.get("/api/mixer")).json()
        assert {c["name"]: c for c in body["controls"]}["Master"]["playback"]["volume"] == [40, 40]


async def test_without_a_mixer_the_api_says_so(tmp_path, monkeypatch):
    use_asoundrc(monkeypatch, tmp_path / "asoundrc", "ctl.!default { type hw card 99 }\n")
    async with open_server(make_config(tmp_path / "state")) as server:
        body = (await server.client.get("/api/mixer")).json()
        assert body["available"] is False and body["controls"] == [] and body["error"]


async def saved_mixer(state_dir, timeout: float = 5.0) -> dict:
    """The mixer section of the saved state, once the service has written it
    (it persists after applying the change: poll the file it writes)."""
    path = state_dir / "state.json"
    with trio.fail_after(timeout):
        while True:
            try:
                return json.loads(path.read_text())["sections"]["mixer"]
            except (FileNotFoundError, KeyError, ValueError):
                await trio.sleep(0.02)



async def test_a_change_is_saved_even_when_the_client_leaves_at_once(tmp_path, pulse):
    """The admin page closed right after moving a slider: Quart cancels the
    request when its client goes; the change had been applied, and it must
    be saved too (it was not, one time in four)."""
    from tests.web.conftest import ADMIN_TOKEN
    state = tmp_path / "state"
    async with open_server(make_config(state)) as server:
        host, port = server.url.rsplit("/", 1)[-1].rsplit(":", 1)
        for percent in (31, 57, 23):
            body = json.dumps({"playback_volume": percent}).encode()
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(
                b"PATCH /api/mixer/controls/Master HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
            with trio.fail_after(10):
                while master() != [percent, percent]:   # applied
                    await trio.sleep(0.01)
            await stream.aclose()   # and gone before the answer
            with trio.fail_after(10):
                while (await saved_mixer(state))["controls"]["Master"]["playback_volume"] \
                        != [percent, percent]:
                    await trio.sleep(0.02)
