"""The standard WHEP players from npm, each in Debian's Chromium and Firefox
ESR, against the real appliance: the player's own code makes the offer and
plays the answer, and the page hears the channel.

The players (tests/players: exact versions, bundled by esbuild into
tests/players/dist/<name>.js, each defining ``window.playWhep(url, token)``;
``make test`` builds them):

- ``eyevinn``: @eyevinn/webrtc-player, default mode (audio + video m-lines)
- ``mediamtx``: mediamtx-webrtc-react's plain reader (video + audio)
- ``norsk``: @norskvideo/webrtc-client's WhepClient (video + audio)
- ``whip-whep``, ``binbat``: the WHEPClient of whip-whep and @binbat/whip-whep
  (the page gives it an audio-only, receive-only peer connection)

Each case: the real server (tests/web's ``open_server``; for Firefox with
this machine's non-loopback ICE address, see test_firefox.py), a page from a
second loopback HTTP server (another origin: every WHEP request is
cross-origin, which listening allows), ``playWhep`` on channel ``main`` (the
440 Hz test tone). The page's Web Audio (the stream the player plays ->
AnalyserNode) must find the tone: dominant frequency 440 Hz, level far above
silence. The server must have served it with the lean transport. Then the
player's own stop (a DELETE for those that send one; the others only close
the peer connection, whose DTLS close_notify ends the session) and the
server's census must return to idle.

Every WHEP request the page makes is logged (``harness.requests``), so a
refused offer fails with its status and body. ``APPLIANCE_PLAYER_OFFERS=<dir>``
writes each case's offer to ``<dir>/<player>-<browser>.sdp`` (as sent, CRLF).
"""
from __future__ import annotations

import dataclasses
import http.server
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio

from tests.e2e.conftest import Page
from tests.e2e.firefox import local_address
from tests.web.conftest import IDLE, make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser]

DIST = Path(__file__).resolve().parents[1] / "players" / "dist"

# name -> whether its own stop sends DELETE
PLAYERS = {"eyevinn": True, "mediamtx": False, "norsk": False, "whip-whep": True, "binbat": True}
BROWSERS = ["chromium", "firefox"]
TONE_HZ = 440.0

# Loaded before the player's bundle: logs every fetch, and measures what the
# player plays with Web Audio once its stream has an audio track.
HARNESS = r"""
(() => {
  const h = window.harness = {requests: [], level: null, heardAt: null, error: null,
                              started: false, stopped: null};
  const realFetch = window.fetch.bind(window);
  window.fetch = async (input, init) => {
    init = init || {};
    const entry = {method: String(init.method || 'GET').toUpperCase(),
                   url: String((input && input.url) || input),
                   body: typeof init.body === 'string' ? init.body : null,
                   status: null, response: null};
    h.requests.push(entry);
    try {
      const response = await realFetch(input, init);
      if (!response.ok) entry.response = await response.clone().text();
      entry.status = response.status;   // last: a status means the entry is complete
      return response;
    } catch (err) {
      entry.status = 0;
      entry.response = String(err);
      throw err;
    }
  };

  function measure() {
    const whep = window.whep;
    if (!whep) return;
    if (!h.analyser) {
      const stream = whep.stream();
      if (!stream || stream.getAudioTracks().length === 0) return;
      const ctx = h.ctx = new AudioContext();
      const analyser = h.analyser = ctx.createAnalyser();
      analyser.fftSize = 8192;
      analyser.smoothingTimeConstant = 0;
      ctx.createMediaStreamSource(stream).connect(analyser);
      // pulled by the destination, silently
      const silent = ctx.createGain();
      silent.gain.value = 0;
      analyser.connect(silent).connect(ctx.destination);
      ctx.resume();
      return;
    }
    const a = h.analyser, n = a.fftSize;
    const wave = new Float32Array(n);
    a.getFloatTimeDomainData(wave);
    let sum = 0;
    for (const v of wave) sum += v * v;
    const spectrum = new Float32Array(a.frequencyBinCount);
    a.getFloatFrequencyData(spectrum);
    let peak = 1;
    for (let i = 2; i < spectrum.length - 1; i++) if (spectrum[i] > spectrum[peak]) peak = i;
    const [l, c, r] = [spectrum[peak - 1], spectrum[peak], spectrum[peak + 1]];
    const curve = l - 2 * c + r;
    const hz = (peak + (curve ? 0.5 * (l - r) / curve : 0)) * h.ctx.sampleRate / n;
    const rmsDb = 10 * Math.log10(sum / n + 1e-20);
    h.level = {hz, rmsDb, t: Math.round(performance.now() - h.startedAt), context: h.ctx.state};
    // heard: the tone dominates, far above silence, in 5 windows running
    h.good = Math.abs(hz - %(tone)s) < 10 && rmsDb > -40 ? (h.good || 0) + 1 : 0;
    if (h.heardAt === null && h.good >= 5) h.heardAt = h.level.t;
  }

  h.start = (url, token) => {
    h.startedAt = performance.now();
    window.playWhep(url, token).then(() => { h.started = true; },
                                      (err) => { h.error = `playWhep: ${err && err.stack || err}`; });
    h.timer = setInterval(() => {
      try { measure(); } catch (err) { h.error = `measuring: ${err}`; clearInterval(h.timer); }
    }, 50);
  };

  // heard, refused, or broken; null while still starting
  h.outcome = () => {
    if (h.error) return {failed: h.error};
    const post = h.requests.find((r) => r.method === 'POST');
    if (post && post.status !== null && post.status !== 201)
      return {failed: `POST ${post.status}: ${post.response}`};
    return h.heardAt !== null ? {heard: h.heardAt} : null;
  };

  h.snapshot = () => {
    const whep = window.whep, pc = whep && whep.pc(), el = whep && whep.element;
    return {requests: h.requests, level: h.level, heardAt: h.heardAt, error: h.error,
            started: h.started, stopped: h.stopped, events: whep ? whep.events : [],
            connection: pc ? pc.connectionState : null,
            element: el ? {tag: el.tagName.toLowerCase(), paused: el.paused, muted: el.muted} : null};
  };

  h.stop = () => {
    clearInterval(h.timer);
    if (h.ctx) h.ctx.close();
    Promise.resolve().then(() => window.whep.stop())
      .then(() => { h.stopped = 'ok'; }, (err) => { h.stopped = `error: ${err}`; });
  };
})();
""" % {"tone": TONE_HZ}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{name}</title>
<script>{harness}</script>
<script src="/dist/{name}.js"></script>
</head><body></body></html>
"""


class _Site(http.server.BaseHTTPRequestHandler):
    """/<player>.html (the harness and the bundle) and /dist/<player>.js."""

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        if name.endswith(".html") and name[:-5] in PLAYERS:
            body = PAGE.format(name=name[:-5], harness=HARNESS).encode()
            kind = "text/html; charset=utf-8"
        elif name.startswith("dist/") and name.endswith(".js") and name[5:-3] in PLAYERS:
            body = (DIST / name[5:]).read_bytes()
            kind = "text/javascript; charset=utf-8"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The players' pages on their own loopback origin."""
    missing = [name for name in PLAYERS if not (DIST / f"{name}.js").exists()]
    if missing:
        pytest.skip(f"tests/players/dist lacks {missing} (make test builds the players)")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="players-site")
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


class Tab:
    """The harness page in either browser, its scripts run through ``page``;
    used only in that browser's thread."""

    def __init__(self, engine: str, b: Any, url: str) -> None:
        self.b, self.chromium = b, None
        if engine == "chromium":
            self.chromium = b.new_page()
            self.page = Page.chromium(self.chromium, timeout_s=15)
        else:
            self.page = Page.firefox(b, timeout_s=15)
        try:
            if self.chromium is not None:
                self.chromium.goto(url)
            else:
                b.m.navigate(url)
            self.page.until("return window.harness && typeof window.playWhep === 'function';")
        except BaseException:
            self.close()
            raise

    def snapshot(self) -> dict[str, Any]:
        return self.page.run("return harness.snapshot();")

    def close(self) -> None:
        if self.chromium is not None:
            self.chromium.close()
        else:
            self.b.m.navigate("about:blank")   # ends the page's peer connections


def save_offer(player: str, engine: str, snapshot: dict[str, Any]) -> None:
    folder = os.environ.get("APPLIANCE_PLAYER_OFFERS")
    post = next((r for r in snapshot["requests"] if r["method"] == "POST"), None)
    if folder and post and post["body"]:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{player}-{engine}.sdp").write_bytes(post["body"].encode())


def whep_log(snapshot: dict[str, Any]) -> str:
    """The page's requests, without their bodies (offers are long)."""
    return json.dumps([{k: v for k, v in r.items() if k != "body"} for r in snapshot["requests"]],
                      indent=1)


@pytest.mark.parametrize("engine", BROWSERS)
@pytest.mark.parametrize("player", list(PLAYERS))
async def test_player_hears_the_tone_and_stop_frees_the_listener(
        player: str, engine: str, site: str, request: pytest.FixtureRequest, tmp_path: Path):
    config = make_config(tmp_path)
    if engine == "firefox":
        address = local_address()
        if address is None:
            pytest.skip("no non-loopback local address: Firefox ESR gathers no loopback "
                        "ICE candidates")
        config = config.replace(engine=dataclasses.replace(config.engine,
                                                           ice_addresses=(address,)))
    b = request.getfixturevalue("browser" if engine == "chromium" else "firefox")

    async with open_server(config) as server:
        endpoint = server.url + "/api/whep/main"

        def play(b: Any) -> tuple[Tab, Any, dict[str, Any]]:
            tab = Tab(engine, b, f"{site}/{player}.html")
            try:
                tab.page.run("harness.start(arguments[0]); return true;", endpoint)
                try:
                    outcome = tab.page.until("return harness.outcome();", timeout_s=20)
                except Exception as error:    # each driver has its own timeout error
                    outcome = {"failed": f"timed out: {error}"}
                return tab, outcome, tab.snapshot()
            except BaseException:
                tab.close()
                raise

        tab, outcome, seen = await b.call(play)
        try:
            save_offer(player, engine, seen)
            print(f"{player}/{engine}: {outcome}; level {seen['level']}; "
                  f"element {seen['element']}; events {seen['events']}")
            assert "heard" in outcome, f"{player} in {engine}: {outcome}\n{whep_log(seen)}"
            assert abs(seen["level"]["hz"] - TONE_HZ) < 10 and seen["level"]["rmsDb"] > -40, seen

            sessions = list(server.service.sessions)
            assert len(sessions) == 1, sessions
            assert sessions[0].read_stats().transport == "lean"
            assert server.service.listener_counts()["total"] == 1
            assert server.service.engine.stats().listeners == 1

            def stop(b: Any) -> dict[str, Any]:
                tab.page.run("harness.stop(); return true;")
                tab.page.until("return harness.stopped;")
                return tab.snapshot()

            after = await b.call(stop)
            assert after["stopped"] == "ok", after["stopped"]
            with trio.fail_after(10):
                for session in sessions:
                    await session.done.wait()
            assert server.service.census() == IDLE
            assert server.service.engine.stats().listeners == 0
            deletes = [r for r in after["requests"] if r["method"] == "DELETE"]
            print(f"{player}/{engine}: stopped; session ended: {sessions[0].end_reason}; "
                  f"DELETE {[r['status'] for r in deletes]}")
            if PLAYERS[player]:
                # 200 even when the peer connection's close_notify ended it first
                assert [r["status"] for r in deletes] == [200], whep_log(after)
            else:
                assert not deletes, whep_log(after)
        finally:
            await b.call(lambda b: tab.close())
