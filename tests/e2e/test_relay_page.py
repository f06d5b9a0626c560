"""The listen page on Janus relays: Debian's janus.js served by the
appliance plays a relay's mountpoint of a stereo channel, each side in its
own ear (tests/support/ears.py), in Chromium, and a relay killed under its
listener is left for another within 3 s, the page saying "reconnecting"
meanwhile; then Firefox ESR plays the relay left, each side in its own ear
too. One run in a network namespace of the test's own
(tests/support/janus_page_check.py; Janus gathers no candidates on
loopback) serves both browsers' tests."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

from support import janus as janus_support
from tests.e2e.firefox import FIREFOX
from tests.support.ears import each_side_in_its_own_ear, ears_from_json
from tests.support.namespaces import can_unshare, run_scenario_blocking

pytestmark = [pytest.mark.browser]


def firefox_available() -> bool:
    return shutil.which(FIREFOX) is not None \
        and importlib.util.find_spec("marionette_driver") is not None


@pytest.fixture(scope="module")
def heard() -> dict[str, Any]:
    if not janus_support.available():
        pytest.skip("needs Debian's janus")
    if not can_unshare():
        pytest.skip("needs unshare -n as root")
    if shutil.which("pulseaudio") is None:
        pytest.skip("needs pulseaudio (make test installs it)")
    script = Path(__file__).parents[1] / "support" / "janus_page_check.py"
    return run_scenario_blocking(script, *(["--firefox"] if firefox_available() else []),
                                 timeout_s=180)


def assert_stereo(played: dict[str, Any], heard: dict[str, Any]) -> None:
    # Janus's offer (the mountpoint's fmtp) and the page's answer ask for
    # stereo: without the answer's, Chromium decodes Opus as mono
    assert played["stereo_offered"] and played["stereo_answered"], heard
    assert each_side_in_its_own_ear(ears_from_json(played["ears"])), heard


def test_chromium_plays_a_janus_relay_in_stereo_and_fails_over_to_another(heard):
    first, after = heard["first"], heard["after"]
    assert first["relay"] in ("j1", "j2")
    assert_stereo(first, heard)
    assert heard["box_listeners"] == 0       # "relays first": the box kept none
    assert after["relay"] in ("j1", "j2") and after["relay"] != first["relay"]
    assert each_side_in_its_own_ear(ears_from_json(after["ears"])), heard
    assert heard["failover_s"] < 3.0
    texts = [text for state, text in after["states"]]
    assert "Reconnecting…" in texts[texts.index("Playing"):]
    assert heard["lost_state"] in ("unhealthy", "connecting")


def test_firefox_plays_a_janus_relay_in_stereo(heard):
    if not firefox_available():
        pytest.skip(f"{FIREFOX} or marionette_driver is missing (make test installs them)")
    assert heard["firefox"]["relay"] == heard["after"]["relay"]    # the one left
    assert_stereo(heard["firefox"], heard)


@pytest.mark.trio
async def test_the_appliance_serves_janus_js_and_says_when_it_is_missing(tmp_path, monkeypatch):
    from appliance.web import ui
    from tests.web.conftest import make_config, open_server
    async with open_server(make_config(tmp_path)) as box:
        r = await box.client.get("/vendor/janus.js", headers={})
        if ui.JANUS_JS.exists():
            assert r.status_code == 200 and "javascript" in r.headers["Content-Type"]
            assert "Janus" in r.text
        monkeypatch.setattr(ui, "JANUS_JS", tmp_path / "absent.js")
        r = await box.client.get("/vendor/janus.js", headers={})
        assert r.status_code == 404 and "libjs-janus-gateway" in r.text
