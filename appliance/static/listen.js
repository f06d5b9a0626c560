// The listen page: one card per channel (an Opus sink) with a Listen/Stop
// button that plays it over WHEP with a plain RTCPeerConnection into an
// <audio> element (never Web Audio: iOS suspends that in the background), a
// volume slider, live levels, listener counts and the channel's source state
// (from /api/listen/events), and this phone's measured delay. Hearing
// settings (mono, clear speech, balance) pick a variant the appliance makes
// once for everyone who picks the same (?mono=1&clear=1&balance=-25).
//
// What it shows is what is true: "Playing" only while the media element
// plays and packets arrive; a refused autoplay says "Tap to play" until a tap
// plays it. It recovers by itself (a fresh WHEP session, with backoff) when
// the appliance restarts, the Wi-Fi roams or the phone wakes, and says so.
// Works on plain http:// (no secure-context APIs; never the microphone).
// Every word comes from the message catalogues (static/i18n/<lang>.json).
import { Meter, api, authHeaders, askPin, el, openEvents, useVenueKey } from "./common.js";
import * as i18n from "./i18n/i18n.js";
import { t, tn } from "./i18n/i18n.js";

const LOW_LATENCY_KEY = "appliance.lowLatency";
const VOLUME_KEY = "appliance.volume";
const HEARING_KEY = "appliance.hearing";
const BALANCE_STEP = 25; // the appliance's steps: listeners share streams
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 10000];
const STATS_MS = 500;
// connected but no packet for this long (plus at most one stats interval:
// noticed within 2 s): the appliance or the path is gone
const STALL_MS = 1500;
// on a relay, which can die under its listeners: back on air within 3 s
const RELAY_STALL_MS = 800;
// the first packet after ICE connects waits for DTLS too: a longer grace
const FIRST_PACKET_MS = 5000;
const DISCONNECTED_GRACE_MS = 2000;
// the longest the appliance's candidates wait for the audio output to run
// (see outputRunning)
const OUTPUT_WAIT_MS = 3000;
const CONNECT_TIMEOUT_MS = 10000;
// full (503): come back after the server's Retry-After, at most this (s), or
// as soon as the listener count drops (someone left: a free slot)
const FULL_RETRY_S = 5;
const STEADY_MS = 10000; // connected this long: the backoff starts over
// a channel this quiet for this long is said to be silent (dBFS, ms)
const SILENT_DBFS = -70;
const SILENT_MS = 4000;
// low latency: ask the jitter buffer for as little delay as it can manage
const LOW_LATENCY_TARGET_MS = 0;
const BLUETOOTH = /bluetooth|airpods|buds|headset|hands-?free|\bbt\b/i;

const hasWebRTC = typeof window.RTCPeerConnection === "function";
// iOS ignores audio.volume (the phone's buttons set it): no slider there
const volumeWorks = (() => { const a = document.createElement("audio"); a.volume = 0.5; return a.volume === 0.5; })();
const channelsBox = document.getElementById("channels");
const focus = channelsBox.dataset.focus || "";
const venue = channelsBox.dataset.venue || document.title;
const lowLatencyBox = document.getElementById("lowlatency");
const notice = document.getElementById("notice");
const cards = new Map(); // sink id -> Card
const sinkLevels = new Map();
const engineLatency = new Map(); // sink id -> ms (capture -> send, from the feed)
let knownSinks = new Set(); // every channel id
let lastChannels = [];
let listenersTotal = Infinity;
let bluetooth = false;

function readBool(key, fallback) {
  try { const v = localStorage.getItem(key); return v === null ? fallback : v === "1"; } catch { return fallback; }
}
function writeValue(key, value) { try { localStorage.setItem(key, value); } catch { /* private mode */ } }
function localStorageGet(key, fallback) {
  try { return localStorage.getItem(key) ?? fallback; } catch { return fallback; }
}

lowLatencyBox.checked = readBool(LOW_LATENCY_KEY, true);
lowLatencyBox.addEventListener("change", () => {
  writeValue(LOW_LATENCY_KEY, lowLatencyBox.checked ? "1" : "0");
  for (const card of cards.values()) card.player.applyLatency();
});

/** The hearing settings, for every channel: remembered per browser, sent
 *  as the WHEP query; a change reconnects what plays. */
const hearing = (() => {
  const boxes = { mono: document.getElementById("mono"), clear: document.getElementById("clear") };
  const balance = document.getElementById("balance");
  const shown = document.getElementById("balance-value");
  let saved = {};
  try { saved = JSON.parse(localStorageGet(HEARING_KEY, "{}")) || {}; } catch { saved = {}; }
  const step = (v) => Math.max(-100, Math.min(100, Math.round(Number(v) / BALANCE_STEP) * BALANCE_STEP)) || 0;
  boxes.mono.checked = saved.mono === true;
  boxes.clear.checked = saved.clear === true;
  balance.value = String(step(saved.balance));
  const value = () => ({ mono: boxes.mono.checked, clear: boxes.clear.checked, balance: step(balance.value) });
  const render = () => {
    const b = value().balance;
    shown.textContent = b === 0 ? t("balance_centre") : t(b < 0 ? "balance_left" : "balance_right", { n: i18n.num(Math.abs(b)) });
  };
  const changed = () => {
    writeValue(HEARING_KEY, JSON.stringify(value()));
    render();
    for (const card of cards.values()) card.player.reconnect();
  };
  boxes.mono.addEventListener("change", changed);
  boxes.clear.addEventListener("change", changed);
  balance.addEventListener("input", render);
  balance.addEventListener("change", changed); // on release: one reconnect, not one a step
  return {
    value,
    render,
    query() {
      const v = value();
      const params = new URLSearchParams();
      if (v.mono) params.set("mono", "1");
      if (v.clear) params.set("clear", "1");
      if (v.balance) params.set("balance", String(v.balance));
      const q = params.toString();
      return q ? `?${q}` : "";
    },
  };
})();

/** Parse `Link: <stun:...>; rel="ice-server"` headers into RTCIceServers. */
function iceServersFrom(response) {
  const header = response.headers.get("Link");
  if (!header) return [];
  const servers = [];
  for (const part of header.split(/,(?=\s*<)/)) {
    const m = part.match(/<([^>]+)>/);
    if (!m || !/rel="?ice-server"?/.test(part)) continue;
    const server = { urls: m[1] };
    const user = part.match(/username="([^"]*)"/);
    const cred = part.match(/credential="([^"]*)"/);
    if (user) server.username = user[1];
    if (cred) server.credential = cred[1];
    servers.push(server);
  }
  return servers;
}

/** Offer Opus only: the appliance sends nothing else, and a shorter offer
 *  (no RED, G.711, DTMF) keeps the answer simple. */
function preferOpus(transceiver) {
  try {
    const caps = RTCRtpReceiver.getCapabilities && RTCRtpReceiver.getCapabilities("audio");
    const opus = caps ? caps.codecs.filter((c) => c.mimeType.toLowerCase() === "audio/opus") : [];
    if (opus.length && transceiver.setCodecPreferences) transceiver.setCodecPreferences(opus);
  } catch (err) { console.warn("setCodecPreferences", err); }
}

// Chromium decodes Opus in stereo only when its own offer says stereo=1 (the
// answer's stereo=1 is not enough): every channel would play as mono, and the
// balance would change the level instead of the side. Firefox offers it.
function askForStereo(sdp) {
  const lines = sdp.split("\r\n");
  const opus = new Set(lines.map((l) => /^a=rtpmap:(\d+) opus\/48000/i.exec(l)).filter(Boolean).map((m) => m[1]));
  const withFmtp = new Set();
  const out = lines.map((line) => {
    const m = /^a=fmtp:(\d+) (.*)$/.exec(line);
    if (!m || !opus.has(m[1])) return line;
    withFmtp.add(m[1]);
    return /(^|;)\s*stereo=/.test(m[2]) ? line : `${line};stereo=1`;
  });
  return out.flatMap((line) => {
    const m = /^a=rtpmap:(\d+) opus\/48000/i.exec(line);
    return m && !withFmtp.has(m[1]) ? [line, `a=fmtp:${m[1]} stereo=1`] : [line];
  }).join("\r\n");
}

/** The answer without its ICE candidates, and those candidates, to add once
 *  the audio output runs. */
function holdCandidates(sdp) {
  const lines = sdp.split("\r\n");
  const candidates = [];
  let section = -1, mids = [];
  for (const line of lines) {
    if (line.startsWith("m=")) section += 1;
    else if (line.startsWith("a=mid:") && section >= 0) mids[section] = line.slice(6);
    else if (line.startsWith("a=candidate:")) candidates.push({ candidate: line.slice(2), sdpMLineIndex: Math.max(section, 0) });
  }
  for (const c of candidates) if (mids[c.sdpMLineIndex] !== undefined) c.sdpMid = mids[c.sdpMLineIndex];
  const kept = lines.filter((l) => !l.startsWith("a=candidate:") && l !== "a=end-of-candidates");
  return { sdp: kept.join("\r\n"), candidates };
}

/** Chromium runs its jitter buffer on the audio output's clock: nothing is
 *  taken out of it until the output device has started, and all that
 *  arrives before is kept and then played that late, which its time
 *  stretching takes 5-10 s to win back. A new output can take 0.1-1.5 s to
 *  start (measured: Chromium into PulseAudio on a busy machine), far longer
 *  than ICE and DTLS on a LAN. So media waits for it: resolves once the
 *  output has played 40 ms (media-playout stats, Chromium 111+, listed a
 *  moment after the answer is set), at once where there are no such stats
 *  (Firefox, Safari) or nothing plays (a refused play()), after `ms` at
 *  most. Asked every 50 ms: getStats every 20 ms slowed the output's start. */
async function outputRunning(pc, audio, ms) {
  const start = performance.now();
  const patience = "playoutDelayHint" in RTCRtpReceiver.prototype ? 500 : 0; // Chromium's own
  for (;;) {
    if (audio.paused) return;
    let played;
    try {
      (await pc.getStats()).forEach((s) => { if (s.type === "media-playout") played = s.totalSamplesDuration; });
    } catch { return; }
    const waited = performance.now() - start;
    if (played >= 0.04 || waited >= ms || (played === undefined && waited >= patience)) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function waitGathering(pc, ms) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const done = () => { if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); } };
    const timer = setTimeout(resolve, ms);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

/** janus.js (Debian's libjs-janus-gateway, served by the appliance), loaded
 *  the first time a listener is sent to a Janus relay; null when the
 *  appliance lacks it (then the box serves). janus.js asks webrtc-adapter
 *  only for the browser's name: this stands in for it. */
let janusLoading = null;
let janusMissing = false;
function loadJanus() {
  if (!janusLoading) janusLoading = new Promise((resolve) => {
    const gone = () => { janusMissing = true; resolve(null); };
    const script = el("script", { src: "/vendor/janus.js", onerror: gone });
    script.addEventListener("load", () => {
      const Janus = window.Janus;
      if (!Janus) return gone();
      const ua = navigator.userAgent;
      const browser = /Firefox\//.test(ua) ? "firefox" : /Version\/[\d.]+.*Safari\//.test(ua) ? "safari" : "chrome";
      const version = Number((ua.match(/(?:Firefox|Chrome|Version)\/(\d+)/) || [])[1]) || 0;
      const adapter = { browserDetails: { browser, version } };
      Janus.init({ debug: false, dependencies: Janus.useDefaultDependencies({ adapter }), callback: () => resolve(Janus) });
    });
    document.head.append(script);
  });
  return janusLoading;
}

/** ±20 %, so a crowd sent away at once does not come back at once. */
function jitter(ms) { return Math.round(ms * (0.8 + 0.4 * Math.random())); }

/** The lock screen: what plays and the play/stop buttons (where the browser
 *  has a Media Session). The last channel started owns it. */
const lockScreen = {
  owner: null,
  claim(player) {
    this.owner = player;
    const session = navigator.mediaSession;
    if (!session) return;
    try {
      if (typeof MediaMetadata === "function") {
        session.metadata = new MediaMetadata({ title: player.name, artist: venue, album: player.description || "" });
      }
      const handlers = {
        play: () => this.owner && this.owner.resume(),
        pause: () => this.owner && this.owner.stop(),
        stop: () => this.owner && this.owner.stop(),
      };
      for (const [action, fn] of Object.entries(handlers)) {
        try { session.setActionHandler(action, fn); } catch { /* an action this browser lacks */ }
      }
    } catch (err) { console.warn("mediaSession", err); }
  },
  update(player) {
    if (player !== this.owner || !navigator.mediaSession) return;
    navigator.mediaSession.playbackState = player.state === "playing" ? "playing" : player.wanted ? "paused" : "none";
  },
  release(player) {
    if (player !== this.owner) return;
    this.owner = null;
    if (navigator.mediaSession) { navigator.mediaSession.metadata = null; navigator.mediaSession.playbackState = "none"; }
  },
};

/** One playback of a sink, with reconnection: WHEP to the appliance (or,
 *  by its 307, to a WHEP relay), or a Janus relay's mountpoint when the
 *  appliance names one (GET /api/listen/where: it is full, or the channel is
 *  "relays first"). A relay that goes silent is left at once for wherever
 *  the appliance says next. Its `state` is derived from the facts (wanted,
 *  the connection, the media element, the packets), never set ahead of them:
 *  idle | connecting | playing | blocked | retrying | error | unsupported. */
class Player {
  constructor(sink, onchange) {
    this.sinkId = sink.id;
    this.relaysFirst = sink.relays_first === true;
    this.name = sink.name;
    this.description = sink.description || "";
    this.onchange = onchange;
    // no autoplay attribute: only our play() starts it, so a refusal is seen
    this.audio = el("audio", { playsinline: true });
    this.audio.setAttribute("playsinline", "");
    this.audio.dataset.sink = sink.id;
    document.body.append(this.audio);
    this.audio.volume = Number(localStorageGet(VOLUME_KEY, "1"));
    for (const name of ["playing", "ended", "emptied"]) this.audio.addEventListener(name, () => this.changed());
    // paused by someone else (the OS, a call): play again, which may be
    // refused ("Tap to play"). Not while a play() is pending or was refused:
    // Chromium fires "pause" for a refused play(), which would loop.
    this.audio.addEventListener("pause", () => {
      if (this.wanted && this.phase === "connected" && !this.playing && !this.blocked) this.tryPlay();
      this.changed();
    });
    this.wanted = false;
    this.phase = "idle"; // idle | connecting | connected | retrying | error
    this.problem = null; // {key, values}: why it is retrying or stopped
    this.blocked = false; // the browser refused play()
    this.playing = false; // a play() is pending
    this.pc = null;
    this.session = null;
    this.janus = null; // a Janus relay's API session (janus.js) while on one
    this.relay = null; // that relay's id
    this.avoid = null; // the relay just lost: not named again at once
    this.stream = null;
    this.attempt = 0;
    this.stats = null;
    this.flowing = false; // packets arrived since the last check
    this.lastPacketAt = 0;
    this.timers = new Set();
    this.generation = 0;
    this.statsTimer = null;
  }

  get state() {
    if (!hasWebRTC) return "unsupported";
    if (!this.wanted) return this.phase === "error" ? "error" : "idle";
    if (this.phase === "retrying") return "retrying";
    if (this.blocked) return "blocked";
    if (this.phase === "connected" && this.flowing && !this.audio.paused) return "playing";
    return "connecting";
  }

  changed() {
    lockScreen.update(this);
    this.onchange(this);
  }

  later(fn, ms) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  clearTimers() { for (const t of this.timers) clearTimeout(t); this.timers.clear(); }

  /** play() on the media element; a refusal (autoplay policy) is "blocked"
   *  until a tap plays it. */
  tryPlay() {
    let promise;
    this.playing = true; // a play() is pending
    try { promise = this.audio.play(); } catch (err) { promise = Promise.reject(err); }
    Promise.resolve(promise).finally(() => { this.playing = false; }).then(() => {
      if (this.blocked) { this.blocked = false; this.changed(); }
    }, (err) => {
      // AbortError: a newer source replaced this one; its own play() decides
      if (!this.wanted || (err && err.name === "AbortError")) return;
      this.blocked = true;
      this.changed();
    });
  }

  /** Must run inside the click handler: that is what lets Safari/iOS play. */
  start() {
    if (!hasWebRTC) return;
    this.wanted = true;
    this.attempt = 0;
    this.problem = null;
    this.blocked = false;
    // iOS: a media session that keeps playing with the silent switch on and
    // the screen locked (Safari 16.4+)
    if (navigator.audioSession) { try { navigator.audioSession.type = "playback"; } catch { /* read-only */ } }
    this.audio.srcObject = new MediaStream();
    this.tryPlay();
    debugAudio.unlock();
    lockScreen.claim(this);
    this.connect();
  }

  /** The button while blocked, or the lock screen's play: play now (in the
   *  gesture), reconnecting first if the session is gone. */
  resume() {
    if (!this.wanted) return this.start();
    this.tryPlay();
    if (this.phase === "retrying") { this.clearTimers(); this.connect(); }
  }

  async stop() {
    this.wanted = false;
    this.phase = "idle";
    this.problem = null;
    this.blocked = false;
    this.stats = null;
    this.clearTimers();
    clearInterval(this.statsTimer);
    this.audio.pause();
    lockScreen.release(this);
    this.changed(); // silent and "Listen" at once; the goodbye follows
    await this.teardown();
    if (!this.wanted) { this.audio.srcObject = null; this.stream = null; }
  }

  async teardown() {
    this.generation += 1;
    const { pc, session, janus } = this;
    this.pc = null;
    this.session = null;
    this.janus = null;
    this.relay = null;
    this.flowing = false;
    if (janus) { try { janus.destroy({ notifyDestroyed: false }); } catch { /* a dead relay */ } }
    if (pc) { pc.ontrack = null; pc.onconnectionstatechange = null; pc.oniceconnectionstatechange = null; }
    // DELETE first, then close: closing sends DTLS close_notify, which ends
    // the session on the appliance too, and the DELETE would find it gone
    if (session) {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), 1500);
      await fetch(session, { method: "DELETE", headers: authHeaders(), keepalive: true, signal: abort.signal }).catch(() => {});
      clearTimeout(timer);
    }
    if (pc) pc.close();
  }

  /** Start over with a fresh session after a wait (backoff, or the
   *  server's Retry-After); `key` says why, in the listener's words. */
  retry(key, values = {}, waitMs = null) {
    if (!this.wanted) return;
    if (this.relay && key === "lost") return this.failover();
    const wait = waitMs ?? jitter(BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)]);
    this.attempt += 1;
    this.phase = "retrying";
    this.problem = { key, values: { ...values, s: Math.max(1, Math.round(wait / 1000)) } };
    this.teardown();
    this.changed();
    this.later(() => this.connect(), wait);
  }

  /** The relay it played from is gone (silent, ICE failed, its API down):
   *  straight back to the appliance, which names another relay or serves
   *  it; "reconnecting" meanwhile. */
  failover() {
    if (!this.wanted) return;
    this.avoid = this.relay;
    this.attempt += 1;
    this.clearTimers();
    this.teardown();
    this.connect();
  }

  /** Where the appliance sends this listener now: {box: true} or {janus:
   *  {relay, url, mountpoint}}; null when it cannot say (then the box).
   *  Relays carry the plain channel only: a hearing variant stays on the box. */
  async where() {
    const avoid = this.avoid;
    this.avoid = null;
    if (janusMissing || hearing.query()) return null;
    const query = avoid ? `?avoid=${encodeURIComponent(avoid)}` : "";
    try {
      const r = await fetch(`/api/listen/where/${encodeURIComponent(this.sinkId)}${query}`, { headers: authHeaders(), cache: "no-store" });
      return r.ok ? await r.json() : null;
    } catch { return null; }
  }

  /** Play a Janus relay's streaming mountpoint through Janus's own API
   *  (janus.js: Janus offers, this page answers). */
  async connectJanus(place, generation) {
    const current = () => this.wanted && generation === this.generation;
    const Janus = await loadJanus();
    if (!current()) return;
    if (!Janus) return this.connect(); // no janus.js here: the box
    this.relay = place.relay;
    let handle = null;
    const lost = () => { if (current()) this.failover(); };
    const janus = new Janus({
      server: place.url,
      error: lost,
      success: () => janus.attach({
        plugin: "janus.plugin.streaming",
        error: lost,
        success: (h) => {
          handle = h;
          if (current()) handle.send({ message: { request: "watch", id: place.mountpoint } });
        },
        onmessage: (message, jsep) => {
          if (!current()) return;
          if (message && message.error) return lost();
          if (!jsep) return;
          handle.createAnswer({
            jsep, tracks: [],
            customizeSdp: (answer) => { answer.sdp = askForStereo(answer.sdp); },
            error: lost,
            success: (answer) => {
              if (!current()) return;
              handle.send({ message: { request: "start" }, jsep: answer });
              this.pc = handle.webrtcStuff.pc;
              this.applyLatency();
              clearInterval(this.statsTimer);
              this.statsTimer = setInterval(() => this.updateStats(), STATS_MS);
            },
          });
        },
        onremotetrack: (track, mid, on) => {
          if (!current() || !on || track.kind !== "audio") return;
          this.stream = new MediaStream([track]);
          this.audio.srcObject = this.stream;
          this.tryPlay();
          debugAudio.attach(this);
        },
        iceState: (s) => {
          if (!current()) return;
          if (s === "failed" || s === "disconnected" || s === "closed") return lost();
          if ((s === "connected" || s === "completed") && this.phase !== "connected") {
            this.phase = "connected";
            this.lastPacketAt = performance.now();
            this.changed();
            this.later(() => { if (current() && this.state === "playing") this.attempt = 0; }, STEADY_MS);
          }
        },
        hangup: lost,
      }),
    });
    this.janus = janus;
    this.later(() => { if (current() && this.phase !== "connected") lost(); }, CONNECT_TIMEOUT_MS);
  }

  /** The hearing settings changed: a fresh session for the new variant. */
  async reconnect() {
    if (!this.wanted) return;
    this.clearTimers();
    clearInterval(this.statsTimer);
    this.attempt = 0;
    this.phase = "connecting";
    this.changed();
    await this.teardown(); // the old variant is given back before the new one is asked for
    if (this.wanted) this.connect();
  }

  fail(key, values = {}) {
    this.wanted = false;
    this.phase = "error";
    this.problem = { key, values };
    this.clearTimers();
    clearInterval(this.statsTimer);
    this.teardown();
    this.audio.pause();
    lockScreen.release(this);
    this.changed();
  }

  applyLatency() {
    if (!this.pc) return;
    const low = lowLatencyBox.checked;
    for (const receiver of this.pc.getReceivers()) {
      try {
        if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = low ? LOW_LATENCY_TARGET_MS : null;
      } catch (err) { console.warn("jitterBufferTarget", err); }
      try {
        if ("playoutDelayHint" in receiver) receiver.playoutDelayHint = low ? LOW_LATENCY_TARGET_MS / 1000 : null;
      } catch (err) { console.warn("playoutDelayHint", err); }
    }
  }

  async connect() {
    if (!this.wanted) return;
    const generation = ++this.generation;
    const current = () => this.wanted && generation === this.generation;
    this.phase = "connecting";
    this.stats = null; // the counters start over with the new connection
    this.changed();
    if (this.relaysFirst || this.avoid) {
      const place = await this.where();
      if (!current()) return;
      if (place && place.janus) return this.connectJanus(place.janus, generation);
    }
    let pc;
    try {
      pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    } catch (err) {
      return this.fail("no_webrtc");
    }
    this.pc = pc;
    const transceiver = pc.addTransceiver("audio", { direction: "recvonly" });
    preferOpus(transceiver);
    this.applyLatency();
    // its track plays from now on, before any packet: the audio output
    // starts while the connection is made (see outputRunning).
    // window.__lateOutput = true: the way the page started before, for
    // bench/join_delay.py's A/B (--ab)
    const early = !window.__lateOutput;
    if (early) {
      this.stream = new MediaStream([transceiver.receiver.track]);
      this.audio.srcObject = this.stream;
      this.tryPlay();
    }
    pc.ontrack = (event) => {
      if (!current()) return;
      if (!this.stream || !this.stream.getTracks().includes(event.track)) this.stream = event.streams[0] || new MediaStream([event.track]);
      if (this.audio.srcObject !== this.stream) this.audio.srcObject = this.stream;
      this.tryPlay();
      debugAudio.attach(this);
    };
    const late = [];
    pc.onicecandidate = (event) => {
      if (!event.candidate) return;
      const c = { candidate: event.candidate.candidate, sdpMid: event.candidate.sdpMid, sdpMLineIndex: event.candidate.sdpMLineIndex };
      if (this.session) this.patch([c]); else late.push(c);
    };
    pc.oniceconnectionstatechange = () => {
      if (!current()) return;
      const s = pc.iceConnectionState;
      if (s === "failed") this.retry("lost");
      else if (s === "disconnected") {
        this.later(() => { if (current() && pc.iceConnectionState === "disconnected") this.retry("lost"); }, DISCONNECTED_GRACE_MS);
      } else if ((s === "connected" || s === "completed") && this.phase !== "connected") {
        this.phase = "connected";
        this.lastPacketAt = performance.now(); // the stall clock starts now
        this.changed();
        this.later(() => { if (current() && this.state === "playing") this.attempt = 0; }, STEADY_MS);
      }
    };
    let response, held;
    try {
      const offer = await pc.createOffer();
      await pc.setLocalDescription({ type: "offer", sdp: askForStereo(offer.sdp) });
      await waitGathering(pc, 600);
      if (!current()) return;
      response = await fetch(`/api/whep/${encodeURIComponent(this.sinkId)}${hearing.query()}`, {
        method: "POST", headers: authHeaders({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp,
      });
    } catch (err) {
      if (current()) this.retry("offline");
      return;
    }
    if (!current()) {
      if (response.status === 201) fetch(new URL(response.headers.get("Location"), response.url), { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(() => {});
      return;
    }
    if (response.status === 401) {
      if (await askPin(t("pin_prompt"), t("pin_enter"))) return this.retry("connecting", {}, 0);
      return this.fail("pin_needed");
    }
    if (response.status === 404) return this.fail("gone");
    if (response.status !== 201) {
      // 503: the listener cap (or the appliance stopping); it says when to come back
      const after = Number(response.headers.get("Retry-After"));
      const wait = Number.isFinite(after) && after > 0 ? jitter(Math.min(after, FULL_RETRY_S) * 1000) : null;
      if (response.status === 503) {
        // full: a Janus relay may take this listener (a WHEP client gets 503)
        const place = await this.where();
        if (!current()) return;
        if (place && place.janus) {
          this.pc = null;
          pc.close();
          return this.connectJanus(place.janus, generation);
        }
        return this.retry("full", {}, wait);
      }
      return this.retry("server_error", { code: response.status }, wait);
    }
    try {
      // against where the answer came from: a full appliance sends
      // listeners (307) to a relay, whose session URL is its own
      this.session = new URL(response.headers.get("Location"), response.url).href;
      const servers = iceServersFrom(response);
      if (servers.length) { try { pc.setConfiguration({ ...pc.getConfiguration(), iceServers: servers }); } catch { /* fine on a LAN */ } }
      // the appliance's candidates wait until the audio output runs
      const text = await response.text();
      const answer = early ? holdCandidates(text) : { sdp: text, candidates: [] };
      held = answer.candidates;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    } catch (err) {
      if (current()) this.retry("offline");
      return;
    }
    if (late.length) this.patch(late.splice(0));
    this.later(() => {
      if (current() && this.phase !== "connected") this.retry("lost");
    }, CONNECT_TIMEOUT_MS);
    clearInterval(this.statsTimer);
    this.statsTimer = setInterval(() => this.updateStats(), STATS_MS);
    if (early) await outputRunning(pc, this.audio, OUTPUT_WAIT_MS);
    if (!current()) return;
    for (const c of held) pc.addIceCandidate(c).catch((err) => console.warn("addIceCandidate", err));
  }

  patch(candidates) {
    if (!this.session) return;
    fetch(this.session, { method: "PATCH", headers: authHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(candidates) }).catch(() => {});
  }

  async updateStats() {
    const pc = this.pc;
    if (!pc) return;
    let report;
    try { report = await pc.getStats(); } catch { report = new Map(); }
    if (pc !== this.pc) return;
    let inbound = null, pair = null, transport = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s;
      if (s.type === "transport") transport = s;
    });
    if (transport && transport.selectedCandidatePairId) pair = report.get(transport.selectedCandidatePairId);
    if (!pair) report.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
    const prev = this.stats;
    const out = {
      packetsReceived: inbound ? inbound.packetsReceived || 0 : 0,
      packetsLost: inbound ? inbound.packetsLost || 0 : 0,
      jitterMs: inbound && inbound.jitter !== undefined ? inbound.jitter * 1000 : null,
      rttMs: pair && pair.currentRoundTripTime !== undefined ? pair.currentRoundTripTime * 1000 : null,
      jitterBufferDelay: inbound ? inbound.jitterBufferDelay || 0 : 0,
      jitterBufferEmittedCount: inbound ? inbound.jitterBufferEmittedCount || 0 : 0,
      jitterBufferTargetDelay: inbound ? inbound.jitterBufferTargetDelay || 0 : 0,
      removedSamplesForAcceleration: inbound ? inbound.removedSamplesForAcceleration || 0 : 0,
      insertedSamplesForDeceleration: inbound ? inbound.insertedSamplesForDeceleration || 0 : 0,
      concealedSamples: inbound ? inbound.concealedSamples || 0 : 0,
      totalSamplesReceived: inbound ? inbound.totalSamplesReceived || 0 : 0,
      audioLevel: inbound ? inbound.audioLevel : null,
      bufferMs: prev ? prev.bufferMs : null,
      targetMs: prev ? prev.targetMs : null,
      engineMs: engineLatency.get(this.sinkId) ?? null,
      delayMs: null,
    };
    if (prev) {
      const dc = out.jitterBufferEmittedCount - prev.jitterBufferEmittedCount;
      if (dc > 0) {
        out.bufferMs = ((out.jitterBufferDelay - prev.jitterBufferDelay) / dc) * 1000;
        out.targetMs = ((out.jitterBufferTargetDelay - prev.jitterBufferTargetDelay) / dc) * 1000;
      }
    }
    // what this phone can measure: the engine's capture -> send, half the
    // round trip, the jitter buffer (the output device's own delay is not
    // visible to a page: see the Bluetooth note)
    if (out.bufferMs !== null) out.delayMs = (out.engineMs ?? 0) + (out.rttMs ?? 0) / 2 + out.bufferMs;
    this.stats = out;
    const now = performance.now();
    if (!report.size) {
      // getStats failed or gave nothing: trust the connection, and leave
      // noticing a dead one to ICE
      this.flowing = this.phase === "connected";
      return this.changed();
    }
    const moved = out.packetsReceived > (prev ? prev.packetsReceived : 0);
    if (moved) { this.lastPacketAt = now; this.flowing = true; }
    const stall = this.relay ? RELAY_STALL_MS : STALL_MS;
    if (this.phase === "connected" && !moved && now - this.lastPacketAt > (this.flowing ? stall : FIRST_PACKET_MS)) {
      // the appliance restarted or the path broke: ICE takes ~10 s to say so
      this.flowing = false;
      return this.retry("lost");
    }
    this.changed();
  }
}

/** Web Audio used only for measuring what the page decodes (tests, the
 *  latency benchmark): never needed for playback itself. */
const debugAudio = {
  ctx: null,
  nodes: new Map(),
  unlock() {
    // created (or resumed) in a click handler so Safari allows it, but only
    // once someone asked for measurements
    if (this.ctx && this.ctx.state === "suspended") this.ctx.resume();
  },
  context() {
    if (!this.ctx) this.ctx = new (window.AudioContext || window.webkitAudioContext)({ latencyHint: "interactive" });
    if (this.ctx.state === "suspended") this.ctx.resume();
    return this.ctx;
  },
  attach(player) {
    const entry = this.nodes.get(player.sinkId);
    if (entry && player.stream) entry.connect(player.stream);
  },
  analyser(sinkId) {
    let entry = this.nodes.get(sinkId);
    if (!entry) {
      const ctx = this.context();
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 16384;
      analyser.smoothingTimeConstant = 0;
      const silent = ctx.createGain();
      silent.gain.value = 0;
      analyser.connect(silent).connect(ctx.destination);
      entry = { analyser, source: null, probe: null,
        connect(stream) {
          if (this.source) this.source.disconnect();
          this.source = ctx.createMediaStreamSource(stream);
          this.source.connect(analyser);
          if (this.probe) this.source.connect(this.probe);
        } };
      this.nodes.set(sinkId, entry);
      const player = cards.get(sinkId)?.player;
      if (player && player.stream) entry.connect(player.stream);
    }
    return entry;
  },
};

function measure(analyser, sampleRate) {
  const time = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(time);
  let sum = 0, peak = 0;
  for (const x of time) { sum += x * x; peak = Math.max(peak, Math.abs(x)); }
  const rms = Math.sqrt(sum / time.length);
  const freq = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(freq);
  let best = 1;
  for (let i = 2; i < freq.length - 1; i++) if (freq[i] > freq[best]) best = i;
  // parabolic interpolation around the strongest bin (values are dB)
  const a = freq[best - 1], b = freq[best], c = freq[best + 1];
  const shift = (a - 2 * b + c) !== 0 ? 0.5 * (a - c) / (a - 2 * b + c) : 0;
  const hz = (best + (Number.isFinite(shift) ? shift : 0)) * sampleRate / analyser.fftSize;
  return {
    rmsDbfs: rms > 0 ? 20 * Math.log10(rms) : -120,
    peakDbfs: peak > 0 ? 20 * Math.log10(peak) : -120,
    frequencyHz: hz,
  };
}

const trackProbes = new Map();

// Hooks for tests and the latency benchmark (harmless for people).
window.applianceDebug = {
  cards,
  state(sinkId) {
    const p = cards.get(sinkId)?.player;
    return p ? { state: p.state, reason: p.problem ? p.problem.key : null, session: p.session, paused: p.audio.paused, blocked: p.blocked, relay: p.relay, text: cards.get(sinkId).status.textContent } : null;
  },
  stats(sinkId) { return cards.get(sinkId)?.player.stats || null; },
  async analyse(sinkId, ms = 500) {
    const entry = debugAudio.analyser(sinkId);
    await new Promise((r) => setTimeout(r, ms));
    return measure(entry.analyser, debugAudio.ctx.sampleRate);
  },
  /** Detect clicks in the decoded audio with an AudioWorklet. Each detection
   *  is stamped three ways (performance.now() milliseconds):
   *  - renderMs: the start of the render quantum that held the click's first
   *    sample, estimated from getOutputTimestamp() minus the output latency
   *  - messageMs: when the worklet's message reached the page (upper bound)
   *  - outputMs: when that sample is due at the speaker (getOutputTimestamp) */
  async probe(sinkId, threshold = 0.05) {
    const ctx = debugAudio.context();
    const entry = debugAudio.analyser(sinkId);
    if (!entry.probe) {
      await ctx.audioWorklet.addModule("/static/probe-worklet.js");
      entry.probe = new AudioWorkletNode(ctx, "click-probe", { processorOptions: { threshold } });
      entry.probe.connect(ctx.destination);
      entry.clicks = [];
      entry.probe.port.onmessage = (e) => {
        const now = performance.now();
        const ts = ctx.getOutputTimestamp();
        const outputMs = ts.performanceTime + (e.data.frame / ctx.sampleRate - ts.contextTime) * 1000;
        const quantumStartMs = ts.performanceTime + (e.data.quantumFrame / ctx.sampleRate - ts.contextTime) * 1000;
        entry.clicks.push({ frame: e.data.frame, messageMs: now, outputMs,
          renderMs: quantumStartMs - (ctx.outputLatency || 0) * 1000 - (ctx.baseLatency || 0) * 1000 });
      };
      if (entry.source) entry.source.connect(entry.probe);
    }
    return { sampleRate: ctx.sampleRate, baseLatency: ctx.baseLatency, outputLatency: ctx.outputLatency, timeOrigin: performance.timeOrigin };
  },
  clicks(sinkId) { const e = debugAudio.nodes.get(sinkId); return e && e.clicks ? e.clicks.splice(0) : []; },
  /** Click detection on the track itself (MediaStreamTrackProcessor, where
   *  the browser has it): each 10 ms chunk arrives as the audio renderer
   *  pulls it out of the jitter buffer and decoder, before any Web Audio
   *  buffering. Stamped with performance.now() at arrival. */
  probeTrack(sinkId, threshold = 0.05) {
    const player = cards.get(sinkId)?.player;
    if (!player || !player.stream || typeof MediaStreamTrackProcessor === "undefined") return false;
    const track = player.stream.getAudioTracks()[0];
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    const found = [];
    trackProbes.set(sinkId, found);
    let quiet = Infinity;
    (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const now = performance.now();
        const n = value.numberOfFrames;
        const rate = value.sampleRate;
        const data = new Float32Array(n);
        try { value.copyTo(data, { planeIndex: 0, format: "f32-planar" }); } finally { value.close(); }
        for (let i = 0; i < n; i++) {
          if (Math.abs(data[i]) >= threshold) {
            if (quiet >= rate * 0.1) found.push({ trackMs: now, index: i, frames: n, rate });
            quiet = 0;
          } else quiet++;
        }
      }
    })();
    return true;
  },
  trackClicks(sinkId) { const f = trackProbes.get(sinkId); return f ? f.splice(0) : []; },
  now() { return performance.now(); },
  receiverSettings(sinkId) {
    const pc = cards.get(sinkId)?.player.pc;
    return pc ? pc.getReceivers().map((r) => ({ jitterBufferTarget: r.jitterBufferTarget ?? null, playoutDelayHint: r.playoutDelayHint ?? null })) : [];
  },
};

const f0 = (v, d = 0) => (v === null || v === undefined || !Number.isFinite(v) ? "–" : i18n.num(v, d));

/** The card of one channel. */
class Card {
  constructor(sink) {
    this.sink = sink;
    this.player = new Player(sink, () => this.render());
    // a name or description in another script than the page's (an English
    // one on the Arabic page read "Hz tone 440"): each sets its own direction
    this.title = el("h2", { dir: "auto" });
    this.language = el("span", { class: "lang" });
    this.suggested = el("span", { class: "suggested" });
    this.count = el("span", { class: "badge" });
    this.description = el("p", { class: "description", dir: "auto" });
    this.meter = new Meter(sink.name);
    this.button = el("button", { class: "listen", type: "button", onclick: () => this.toggle() });
    this.status = el("div", { class: "state", role: "status", "aria-live": "polite" });
    this.notice = el("div", { class: "notice", role: "status", "aria-live": "polite" });
    this.volumeLabel = el("label", {});
    this.volume = el("input", { type: "range", min: "0", max: "1", step: "0.01", value: String(this.player.audio.volume),
      oninput: (e) => {
        this.player.audio.volume = Number(e.target.value);
        writeValue(VOLUME_KEY, e.target.value);
      } });
    this.stats = el("div", { class: "stats" });
    this.bluetooth = el("p", { class: "hint bluetooth", hidden: true });
    this.node = el("article", { class: "channel", "data-sink": sink.id },
      el("div", { class: "head" }, this.title, this.count),
      el("div", { class: "meta" }, this.language, this.suggested),
      this.description,
      this.meter.node,
      this.button,
      this.status,
      this.notice,
      volumeWorks ? el("div", { class: "row" }, this.volumeLabel, this.volume) : null,
      this.stats,
      this.bluetooth);
    this.silentSince = null;
    this.source = sink.source || "ok";
    this.update(sink);
  }

  update(sink) {
    this.sink = sink;
    this.player.name = sink.name;
    this.player.description = sink.description || "";
    this.source = sink.source || this.source;
    this.setCount(sink.listeners || 0);
    this.render();
  }

  setCount(n) {
    this.listeners = n;
    this.count.dataset.count = String(n);
    this.count.textContent = tn("listeners", n);
  }

  toggle() {
    const p = this.player;
    if (!p.wanted) p.start();
    else if (p.state === "blocked") p.resume(); // the tap that lets it play
    else p.stop();
  }

  level(level) {
    this.meter.update(level);
    const peak = Math.max(-120, ...(level.peak_dbfs || [-120]));
    const now = performance.now();
    if (peak > SILENT_DBFS) this.silentSince = null;
    else if (this.silentSince === null) this.silentSince = now;
    const silent = this.silentSince !== null && now - this.silentSince >= SILENT_MS;
    if (silent !== (this.node.dataset.silent === "1")) { this.node.dataset.silent = silent ? "1" : "0"; this.render(); }
  }

  render() {
    const p = this.player;
    const state = p.state;
    const sink = this.sink;
    this.title.textContent = sink.name;
    this.title.lang = sink.language || "";
    this.language.textContent = i18n.languageName(sink.language);
    this.suggested.textContent = this.node.dataset.suggested === "1" ? t("your_language") : "";
    this.description.textContent = sink.description || "";
    this.description.lang = sink.language || "";
    this.volumeLabel.textContent = t("volume");
    this.volume.setAttribute("aria-label", t("volume_of", { name: sink.name }));
    this.count.textContent = tn("listeners", this.listeners);
    this.node.classList.toggle("playing", state === "playing");
    const on = p.wanted;
    const label = { unsupported: "cannot_play", blocked: "tap_to_play" }[state] || (on ? "stop" : "listen");
    this.button.classList.toggle("stop", on && state !== "blocked");
    this.button.classList.toggle("blocked", state === "blocked");
    this.button.disabled = state === "unsupported";
    this.button.replaceChildren(el("span", { class: "icon" }), el("span", { text: t(label) }));
    this.button.setAttribute("aria-pressed", on ? "true" : "false");
    this.button.dataset.label = label;
    const texts = {
      idle: "", unsupported: "", playing: t("playing"), blocked: t("blocked"),
      connecting: t(p.attempt ? "reconnecting" : "connecting"),
    };
    this.status.textContent = state in texts ? texts[state] : (p.problem ? t(p.problem.key, p.problem.values) : "");
    this.status.className = "state" + (state === "playing" ? " ok" : ["error", "blocked", "retrying"].includes(state) ? " bad" : "");
    this.status.dataset.state = state;
    this.status.dataset.reason = p.problem ? p.problem.key : "";
    // the channel itself: its source gone, nothing routed, or quiet
    const why = this.source === "lost" ? "source_lost" : this.source === "none" ? "source_none"
      : this.node.dataset.silent === "1" ? "silent" : "";
    this.notice.textContent = why ? t(why) : "";
    this.notice.dataset.notice = why;
    const s = p.stats;
    if (on && s) {
      const stat = (k, v, title, cls = "") => el("div", { class: "stat " + cls, title }, el("span", { class: "k", text: k }), el("span", { class: "v", text: v }));
      const ms = (v, d = 0) => t("ms", { v: f0(v, d) });
      this.stats.replaceChildren(
        stat(t("delay"), ms(s.delayMs), t("delay_title", { engine: f0(s.engineMs, 1), network: f0(s.rttMs === null ? null : s.rttMs / 2, 1), buffer: f0(s.bufferMs) }), "delay"),
        stat(t("rtt"), ms(s.rttMs, 1), t("rtt_title")),
        stat(t("jitter"), ms(s.jitterMs, 1), t("jitter_title")),
        stat(t("buffer"), ms(s.bufferMs), t("buffer_title")),
        stat(t("lost_packets"), f0(s.packetsLost), t("received_title", { n: f0(s.packetsReceived) })));
      this.stats.dataset.packets = String(s.packetsReceived);
      this.stats.dataset.delay = s.delayMs === null ? "" : s.delayMs.toFixed(1);
    } else {
      this.stats.textContent = "";
    }
    this.bluetooth.hidden = !(on && bluetooth);
    this.bluetooth.textContent = t("bluetooth_detected");
  }
}

/** Channels in the listener's languages first (the page's language when
 *  they chose it with the switch, then the phone's), the rest in the
 *  appliance's order; the best is marked. */
function order(list) {
  const phone = navigator.languages || [navigator.language || ""];
  const preferred = i18n.chosen() ? [i18n.current(), ...phone] : phone;
  const ranked = list.map((s, i) => ({ s, i, r: i18n.rank(s.language, preferred) }));
  ranked.sort((a, b) => (a.r - b.r) || (a.i - b.i));
  const best = ranked.length > 1 && Number.isFinite(ranked[0].r) ? ranked[0].s.id : null;
  return { list: ranked.map((x) => x.s), best };
}

async function loadChannels() {
  let sinks;
  try {
    sinks = await api("/api/listen/channels");
  } catch (err) {
    if (err.status === 401 && await askPin(t("pin_prompt"), t("pin_enter"))) return loadChannels();
    const message = err.status === 401 ? t("pin_needed") : t("channels_error", { error: err.status || err.message });
    channelsBox.replaceChildren(el("p", { class: "error", text: message }));
    setTimeout(loadChannels, 3000);
    return;
  }
  lastChannels = sinks;
  knownSinks = new Set(sinks.map((s) => s.id));
  for (const s of sinks) {
    // null: nothing measured since the channel changed (a new delay)
    if (s.engine_latency_ms !== null && s.engine_latency_ms !== undefined) engineLatency.set(s.id, s.engine_latency_ms);
    else engineLatency.delete(s.id);
  }
  showChannels();
}

function showChannels() {
  let list = lastChannels.filter((s) => s.kind === "opus");
  if (focus) list = list.filter((s) => s.id === focus);
  const { list: ordered, best } = order(list);
  const seen = new Set();
  for (const sink of ordered) {
    seen.add(sink.id);
    let card = cards.get(sink.id);
    if (!card) { card = new Card(sink); cards.set(sink.id, card); }
    card.node.dataset.suggested = sink.id === best ? "1" : "0";
    card.update(sink);
  }
  for (const [id, card] of cards) {
    if (!seen.has(id)) { card.player.stop(); card.node.remove(); cards.delete(id); }
  }
  if (!ordered.length) {
    channelsBox.replaceChildren(el("p", { class: "hint", text: focus ? t("no_channel", { name: focus }) : t("no_channels") }));
  } else {
    channelsBox.replaceChildren(...ordered.map((s) => cards.get(s.id).node));
  }
  for (const [id, level] of sinkLevels) cards.get(id)?.level(level);
}

/** Where the browser names its output devices (only after a permission we
 *  never ask for, so rarely), a Bluetooth one is worth a warning. */
async function detectBluetooth() {
  try {
    const devices = navigator.mediaDevices && navigator.mediaDevices.enumerateDevices
      ? await navigator.mediaDevices.enumerateDevices() : [];
    const outputs = devices.filter((d) => d.kind === "audiooutput" && d.label);
    const current = outputs.find((d) => d.deviceId === "default") || outputs[0];
    bluetooth = Boolean(current && BLUETOOTH.test(current.label));
  } catch { bluetooth = false; }
  for (const card of cards.values()) card.render();
}

/** The language switch: every message re-rendered, the choice remembered
 *  (a cookie, so the server renders the next page in it too). */
function languageSwitch() {
  const select = document.getElementById("language");
  if (!select) return;
  select.replaceChildren(...Object.entries(i18n.languages).map(([code, name]) =>
    el("option", { value: code, text: name, lang: code, selected: code === i18n.current() })));
  select.addEventListener("change", async () => {
    await i18n.use(select.value, { remember: true });
    document.title = `${t("listen_title")} · ${venue}`;
    showChannels();
    for (const card of cards.values()) { card.meter.translate(); card.render(); }
    hearing.render();
    showNotice();
  });
}

function showNotice() {
  notice.hidden = hasWebRTC;
  notice.textContent = hasWebRTC ? "" : t("no_webrtc");
}

// Hooks for tests and the latency benchmark (harmless for people).
window.applianceDebug = Object.assign(window.applianceDebug, {
  ready: false,
  setLowLatency(on) { lowLatencyBox.checked = on; lowLatencyBox.dispatchEvent(new Event("change")); },
  hearing() { return hearing.value(); },
  language() { return i18n.current(); },
});

async function main() {
  await useVenueKey();
  await i18n.use(i18n.current()).catch((err) => console.warn("messages", err));
  languageSwitch();
  hearing.render();
  showNotice();
  const live = document.getElementById("live");
  openEvents({
    listeners: (data) => {
      const counts = data.sinks || {};
      for (const [id, card] of cards) card.setCount(counts[id] || 0);
      const total = Object.values(counts).reduce((a, b) => a + b, 0);
      if (total < listenersTotal) {
        // a slot freed: a page waiting because the appliance was full tries
        // now (spread over a second, so a crowd does not come back at once)
        for (const card of cards.values()) {
          const p = card.player;
          if (p.wanted && p.phase === "retrying" && p.problem && p.problem.key === "full") {
            p.clearTimers();
            p.later(() => p.connect(), Math.round(Math.random() * 1000));
          }
        }
      }
      listenersTotal = total;
      // a channel added or removed in the admin page shows up here
      const known = new Set(Object.keys(counts));
      if ([...known].some((id) => !knownSinks.has(id)) || [...knownSinks].some((id) => !known.has(id))) loadChannels();
    },
    levels: (data) => {
      for (const [id, level] of Object.entries(data.sinks || {})) {
        sinkLevels.set(id, level);
        cards.get(id)?.level(level);
      }
      for (const [id, ms] of Object.entries(data.latency_ms || {})) {
        if (ms === null) engineLatency.delete(id); else engineLatency.set(id, ms);
      }
    },
    device: (data) => {
      for (const [id, state] of Object.entries(data.sinks || {})) {
        const card = cards.get(id);
        if (card) { card.source = state; card.render(); }
      }
    },
  }, (on) => { live.className = "dot " + (on ? "live" : "down"); live.title = t(on ? "live" : "reconnecting"); },
  { path: "/api/listen/events", onDenied: () => askPin(t("pin_prompt"), t("pin_enter")) });

  // back from the pocket, the Wi-Fi back: retry now instead of at the end of a backoff
  const wake = () => {
    for (const card of cards.values()) {
      const p = card.player;
      if (p.wanted && p.phase === "retrying") { p.clearTimers(); p.connect(); }
      else if (p.wanted && p.phase === "connected" && p.audio.paused) p.tryPlay();
    }
  };
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") wake(); });
  window.addEventListener("online", wake);
  window.addEventListener("pagehide", () => {
    for (const card of cards.values()) {
      const session = card.player.session;
      if (session) fetch(session, { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(() => {});
    }
  });
  if (navigator.mediaDevices && "ondevicechange" in navigator.mediaDevices) navigator.mediaDevices.addEventListener("devicechange", detectBluetooth);
  await loadChannels();
  detectBluetooth();
  window.applianceDebug.ready = true;
}

main();
