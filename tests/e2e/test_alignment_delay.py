"""The alignment delay as a browser hears it: one click source into two
channels, one delayed by 200 ms, played side by side in one headless
Chromium page; each click reaches the delayed channel's decoded track 200 ms
after the other's. The page's own clock measures both, so nothing between
the engine and the browser cancels out by luck."""
from __future__ import annotations

import statistics

import pytest

from tests.e2e.conftest import Browser
from tests.web.conftest import make_config, open_server

# about 10 s (two sessions, a dozen clicks each): the engine test shows the delay fast
pytestmark = [pytest.mark.trio, pytest.mark.browser, pytest.mark.slow]

DELAY_MS = 200
DATA = {
    "sources": [{"id": "clicks", "kind": "clicks", "click_interval_ms": 300,
                 "tone_hz": 2000.0, "tone_dbfs": -6.0}],
    "sinks": [{"id": "near", "name": "Near", "kind": "opus"},
              {"id": "far", "name": "Far", "kind": "opus", "delay_ms": DELAY_MS}],
    "routes": [{"id": "clicks-near", "source_id": "clicks", "sink_id": "near"},
               {"id": "clicks-far", "source_id": "clicks", "sink_id": "far"}],
}


async def test_a_delayed_channel_is_heard_later_by_its_delay(tmp_path, browser):
    async with open_server(make_config(tmp_path, data=DATA)) as server:
        def run(b: Browser):
            page = b.new_page()
            page.goto(server.url + "/")
            for sink in ("near", "far"):
                page.click(f'.channel[data-sink="{sink}"] button.listen')
                page.wait_for_selector(f'.channel[data-sink="{sink}"] .state[data-state="playing"]',
                                       timeout=15000)
            if not all(page.evaluate(f"applianceDebug.probeTrack('{s}', 0.1)") for s in ("near", "far")):
                page.close()
                return None
            # clicks as they come out of each channel's jitter buffer and decoder
            page.wait_for_function("""() => {
                const a = (window.__clicks ||= {near: [], far: []});
                for (const s of ["near", "far"]) a[s].push(...applianceDebug.trackClicks(s).map(c => c.trackMs));
                return a.near.length >= 12 && a.far.length >= 12; }""", timeout=20000)
            clicks = page.evaluate("window.__clicks")
            for sink in ("near", "far"):
                page.click(f'.channel[data-sink="{sink}"] button.listen')
            page.close()
            return clicks

        clicks = await browser.call(run)
    if clicks is None:
        pytest.skip("this Chromium has no MediaStreamTrackProcessor")
    # the first ones while the jitter buffers settle are left out
    near, far = clicks["near"][2:], clicks["far"][2:]
    lags = [f - max(n for n in near if n < f) for f in far if any(n < f for n in near)]
    lags = [lag for lag in lags if lag < 280]   # clicks come every 300 ms
    assert len(lags) >= 7, clicks
    # the last ones: both jitter buffers have settled (they start apart)
    assert statistics.median(lags[-5:]) == pytest.approx(DELAY_MS, abs=25), lags
