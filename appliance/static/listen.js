// The listen page: one card per channel (an Opus sink) with a Listen/Stop
// button that plays it over WHEP with a plain RTCPeerConnection, a volume
// slider, live levels and listener counts (from /api/listen/events), and the
// measured round trip and jitter. Works on plain http:// (no secure-context
// APIs) and starts playback inside the click handler for Safari/iOS.
import { Meter, api, authHeaders, askPin, el, openEvents, plural } from "./common.js";

const LOW_LATENCY_KEY = "appliance.lowLatency";
const VOLUME_KEY = "appliance.volume";
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 10000];
const DISCONNECTED_GRACE_MS = 2500;
const CONNECT_TIMEOUT_MS = 10000;
// low latency: ask the jitter buffer for as little delay as it can manage
const LOW_LATENCY_TARGET_MS = 0;

const channelsBox = document.getElementById("channels");
const focus = channelsBox.dataset.focus || "";
const lowLatencyBox = document.getElementById("lowlatency");
const cards = new Map(); // sink id -> Card
const sinkLevels = new Map();
let knownSinks = new Set(); // every sink id, listenable or not

function readBool(key, fallback) {
  try { const v = localStorage.getItem(key); return v === null ? fallback : v === "1"; } catch { return fallback; }
}
function writeValue(key, value) { try { localStorage.setItem(key, value); } catch { /* private mode */ } }

lowLatencyBox.checked = readBool(LOW_LATENCY_KEY, true);
lowLatencyBox.addEventListener("change", () => {
  writeValue(LOW_LATENCY_KEY, lowLatencyBox.checked ? "1" : "0");
  for (const card of cards.values()) card.player.applyLatency();
});

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

function waitGathering(pc, ms) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const done = () => { if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); } };
    const timer = setTimeout(resolve, ms);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

/** One WHEP playback of a sink, with reconnection. */
class Player {
  constructor(sinkId, onchange) {
    this.sinkId = sinkId;
    this.onchange = onchange;
    this.audio = el("audio", { playsinline: true, autoplay: true });
    this.audio.setAttribute("playsinline", "");
    document.body.append(this.audio);
    this.audio.volume = Number(localStorageGet(VOLUME_KEY, "1"));
    this.wanted = false;
    this.pc = null;
    this.session = null;
    this.stream = null;
    this.attempt = 0;
    this.state = "idle";
    this.detail = "";
    this.stats = null;
    this.timers = new Set();
    this.generation = 0;
  }

  setState(state, detail = "") {
    this.state = state;
    this.detail = detail;
    this.onchange(this);
  }

  later(fn, ms) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  clearTimers() { for (const t of this.timers) clearTimeout(t); this.timers.clear(); }

  /** Must run inside the click handler: that is what lets Safari/iOS play. */
  start() {
    this.wanted = true;
    this.attempt = 0;
    this.audio.srcObject = new MediaStream();
    this.audio.play().catch(() => {});
    debugAudio.unlock();
    this.connect();
  }

  async stop() {
    this.wanted = false;
    this.clearTimers();
    clearInterval(this.statsTimer);
    await this.teardown();
    this.audio.pause();
    this.audio.srcObject = null;
    this.stream = null;
    this.stats = null;
    this.setState("idle");
  }

  async teardown() {
    this.generation += 1;
    const { pc, session } = this;
    this.pc = null;
    this.session = null;
    if (pc) { pc.ontrack = null; pc.onconnectionstatechange = null; pc.oniceconnectionstatechange = null; pc.close(); }
    if (session) {
      await fetch(session, { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(() => {});
    }
  }

  retry(reason) {
    if (!this.wanted) return;
    const wait = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.setState("retrying", `${reason} — trying again in ${(wait / 1000).toFixed(wait < 1000 ? 1 : 0)} s`);
    this.teardown();
    this.later(() => this.connect(), wait);
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
    this.setState("connecting", this.attempt ? "reconnecting…" : "connecting…");
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    this.pc = pc;
    const transceiver = pc.addTransceiver("audio", { direction: "recvonly" });
    preferOpus(transceiver);
    this.applyLatency();
    pc.ontrack = (event) => {
      this.stream = event.streams[0] || new MediaStream([event.track]);
      this.audio.srcObject = this.stream;
      this.audio.play().catch((err) => this.setState("blocked", `press Listen again to allow sound (${err.name})`));
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
      if (s === "failed") this.retry("connection lost");
      else if (s === "disconnected") {
        this.setState("connecting", "network interrupted…");
        this.later(() => { if (current() && pc.iceConnectionState === "disconnected") this.retry("connection lost"); }, DISCONNECTED_GRACE_MS);
      } else if (s === "connected" || s === "completed") {
        this.setState("playing");
        // a connection that holds for 10 s resets the backoff
        this.later(() => { if (current() && this.state === "playing") this.attempt = 0; }, 10000);
      }
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitGathering(pc, 600);
      if (!current()) return;
      const response = await fetch(`/api/whep/${encodeURIComponent(this.sinkId)}`, {
        method: "POST", headers: authHeaders({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp,
      });
      if (!current()) {
        if (response.status === 201) fetch(response.headers.get("Location"), { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(() => {});
        return;
      }
      if (response.status === 401) {
        if (await askPin()) return this.retry("PIN accepted");
        this.wanted = false;
        return this.setState("error", "the venue PIN is needed to listen");
      }
      if (response.status !== 201) {
        const text = (await response.text()).trim();
        if (response.status === 404) { this.wanted = false; await this.teardown(); return this.setState("error", text || "no such channel"); }
        return this.retry(response.status === 503 ? "the appliance is full" : `server said ${response.status}`);
      }
      this.session = new URL(response.headers.get("Location"), location.href).href;
      const servers = iceServersFrom(response);
      if (servers.length) { try { pc.setConfiguration({ ...pc.getConfiguration(), iceServers: servers }); } catch { /* fine on a LAN */ } }
      await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
      if (late.length) this.patch(late.splice(0));
      this.later(() => {
        if (current() && !["connected", "completed"].includes(pc.iceConnectionState)) this.retry("no connection");
      }, CONNECT_TIMEOUT_MS);
      clearInterval(this.statsTimer);
      this.statsTimer = setInterval(() => this.updateStats(), 1000);
    } catch (err) {
      if (current()) this.retry(err && err.message ? err.message : "network error");
    }
  }

  patch(candidates) {
    if (!this.session) return;
    fetch(this.session, { method: "PATCH", headers: authHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(candidates) }).catch(() => {});
  }

  async updateStats() {
    const pc = this.pc;
    if (!pc) return;
    let report;
    try { report = await pc.getStats(); } catch { return; }
    let inbound = null, pair = null, transport = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s;
      if (s.type === "transport") transport = s;
    });
    if (transport && transport.selectedCandidatePairId) pair = report.get(transport.selectedCandidatePairId);
    if (!pair) report.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
    const prev = this.stats;
    const out = {
      packetsReceived: inbound ? inbound.packetsReceived : 0,
      packetsLost: inbound ? inbound.packetsLost : 0,
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
      bufferMs: null,
      targetMs: null,
    };
    if (prev) {
      const dc = out.jitterBufferEmittedCount - prev.jitterBufferEmittedCount;
      if (dc > 0) {
        out.bufferMs = ((out.jitterBufferDelay - prev.jitterBufferDelay) / dc) * 1000;
        out.targetMs = ((out.jitterBufferTargetDelay - prev.jitterBufferTargetDelay) / dc) * 1000;
      }
    }
    this.stats = out;
    this.onchange(this);
  }
}

function localStorageGet(key, fallback) {
  try { return localStorage.getItem(key) ?? fallback; } catch { return fallback; }
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
  state(sinkId) { const p = cards.get(sinkId)?.player; return p ? { state: p.state, detail: p.detail, session: p.session } : null; },
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
  setLowLatency(on) { lowLatencyBox.checked = on; lowLatencyBox.dispatchEvent(new Event("change")); },
  receiverSettings(sinkId) {
    const pc = cards.get(sinkId)?.player.pc;
    return pc ? pc.getReceivers().map((r) => ({ jitterBufferTarget: r.jitterBufferTarget ?? null, playoutDelayHint: r.playoutDelayHint ?? null })) : [];
  },
};

/** The card of one channel. */
class Card {
  constructor(sink) {
    this.sink = sink;
    this.player = new Player(sink.id, () => this.render());
    this.title = el("h2", { text: sink.name });
    this.count = el("span", { class: "badge" });
    this.meter = new Meter(sink.name);
    this.button = el("button", { class: "listen", type: "button", onclick: () => this.toggle() });
    this.status = el("div", { class: "state", role: "status", "aria-live": "polite" });
    this.volume = el("input", { type: "range", min: "0", max: "1", step: "0.01", value: String(this.player.audio.volume),
      "aria-label": `${sink.name} volume`, oninput: (e) => {
        this.player.audio.volume = Number(e.target.value);
        writeValue(VOLUME_KEY, e.target.value);
      } });
    this.stats = el("div", { class: "stats" });
    this.node = el("article", { class: "channel", "data-sink": sink.id },
      el("div", { class: "head" }, this.title, this.count),
      this.meter.node,
      this.button,
      this.status,
      el("div", { class: "row" }, el("label", { text: "Volume" }), this.volume),
      this.stats);
    this.setCount(sink.listeners || 0);
    this.render();
  }

  setCount(n) {
    this.listeners = n;
    this.count.textContent = plural(n, "listener", "listeners");
    this.count.dataset.count = String(n);
  }

  toggle() {
    if (this.player.wanted) this.player.stop();
    else this.player.start();
  }

  render() {
    const p = this.player;
    const on = p.wanted;
    this.node.classList.toggle("playing", on && p.state === "playing");
    this.button.classList.toggle("stop", on);
    this.button.replaceChildren(el("span", { class: "icon" }), el("span", { text: on ? "Stop" : "Listen" }));
    this.button.setAttribute("aria-pressed", on ? "true" : "false");
    const texts = { idle: "", connecting: p.detail, playing: "Playing", retrying: p.detail, error: p.detail, blocked: p.detail };
    this.status.textContent = texts[p.state] ?? p.detail;
    this.status.className = "state" + (p.state === "playing" ? " ok" : ["error", "blocked"].includes(p.state) ? " bad" : "");
    this.status.dataset.state = p.state;
    const s = p.stats;
    if (on && s) {
      const f = (v, d = 0) => (v === null || v === undefined ? "–" : v.toFixed(d));
      const stat = (k, v, title) => el("div", { class: "stat", title }, el("span", { class: "k", text: k }), el("span", { class: "v", text: v }));
      this.stats.replaceChildren(
        stat("RTT", `${f(s.rttMs, 1)} ms`, "network round-trip time (ICE)"),
        stat("Jitter", `${f(s.jitterMs, 1)} ms`, "packet arrival jitter (RTP)"),
        stat("Buffer", `${f(s.bufferMs)} ms`, "audio held in the jitter buffer"),
        stat("Lost", `${s.packetsLost}`, `${s.packetsReceived} packets received`));
      this.stats.dataset.packets = String(s.packetsReceived);
    } else {
      this.stats.textContent = "";
    }
  }
}

async function loadChannels() {
  let sinks;
  try {
    sinks = await api("/api/listen/channels");
  } catch (err) {
    if (err.status === 401 && await askPin()) return loadChannels();
    channelsBox.replaceChildren(el("p", { class: "error", text: `Cannot load the channels: ${err.message}` }));
    setTimeout(loadChannels, 3000);
    return;
  }
  knownSinks = new Set(sinks.map((s) => s.id));
  let list = sinks.filter((s) => s.kind === "opus");
  if (focus) list = list.filter((s) => s.id === focus);
  const seen = new Set();
  for (const sink of list) {
    seen.add(sink.id);
    let card = cards.get(sink.id);
    if (!card) { card = new Card(sink); cards.set(sink.id, card); }
    else { card.title.textContent = sink.name; card.setCount(sink.listeners || 0); }
  }
  for (const [id, card] of cards) {
    if (!seen.has(id)) { card.player.stop(); card.node.remove(); cards.delete(id); }
  }
  if (!list.length) {
    channelsBox.replaceChildren(el("p", { class: "hint", text: focus ? `There is no channel “${focus}”.` : "No channels yet." }));
  } else {
    channelsBox.replaceChildren(...list.map((s) => cards.get(s.id).node));
  }
  for (const [id, level] of sinkLevels) cards.get(id)?.meter.update(level);
}

const live = document.getElementById("live");
openEvents({
  listeners: (data) => {
    const counts = data.sinks || {};
    for (const [id, card] of cards) card.setCount(counts[id] || 0);
    // a channel added or removed in the admin page shows up here
    const known = new Set(Object.keys(counts));
    if ([...known].some((id) => !knownSinks.has(id)) || [...knownSinks].some((id) => !known.has(id))) loadChannels();
  },
  levels: (data) => {
    for (const [id, level] of Object.entries(data.sinks || {})) {
      sinkLevels.set(id, level);
      cards.get(id)?.meter.update(level);
    }
  },
}, (on) => { live.className = "dot " + (on ? "live" : "down"); live.title = on ? "live" : "reconnecting"; },
{ path: "/api/listen/events", onDenied: () => askPin() });

window.addEventListener("pagehide", () => {
  for (const card of cards.values()) {
    const session = card.player.session;
    if (session) fetch(session, { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(() => {});
  }
});

loadChannels();
