"""The listen page on Janus relays, in Chromium: Debian's janus.js served by
the appliance plays a relay's mountpoint of a stereo channel, each side in
its own ear (tests/support/ears.py), and a relay killed under its listener is
left for another within 3 s, the page saying "reconnecting" meanwhile. Run
in a network namespace of the test's own (tests/support/janus_page_check.py):
Janus gathers no candidates on loopback."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import trio

from support import janus as janus_support
from tests.support.ears import each_side_in_its_own_ear, ears_from_json
from tests.web.test_relays import can_unshare

pytestmark = [pytest.mark.trio, pytest.mark.browser,
              pytest.mark.skipif(not janus_support.available(), reason="needs Debian's janus"),
              pytest.mark.skipif(not can_unshare(), reason="needs unshare -n as root"),
              pytest.mark.skipif(shutil.which("pulseaudio") is None,
                                 reason="needs pulseaudio (make test installs it)")]


async def test_the_listen_page_plays_a_janus_relay_and_fails_over_to_another():
    script = Path(__file__).parents[1] / "support" / "janus_page_check.py"
    done = await trio.run_process(["unshare", "-n", sys.executable, str(script)],
                                  capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    heard = json.loads(done.stdout.decode().strip().splitlines()[-1])
    first, after = heard["first"], heard["after"]
    assert first["relay"] in ("j1", "j2")
    # Janus's offer (the mountpoint's fmtp) and the page's answer ask for
    # stereo: without the answer's, Chromium decodes Opus as mono
    assert first["stereo_offered"] and first["stereo_answered"], heard
    assert each_side_in_its_own_ear(ears_from_json(first["ears"])), heard
    assert heard["box_listeners"] == 0       # "relays first": the box kept none
    assert after["relay"] in ("j1", "j2") and after["relay"] != first["relay"]
    assert each_side_in_its_own_ear(ears_from_json(after["ears"])), heard
    assert heard["failover_s"] < 3.0
    texts = [text for state, text in after["states"]]
    assert "Reconnecting…" in texts[texts.index("Playing"):]
    assert heard["lost_state"] in ("unhealthy", "connecting")


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
