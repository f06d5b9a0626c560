// The admin page: status, sources/sinks/routes (gain, mute), the HAT's
// mixer, live meters and a share link with a QR code for each channel.
import { Meter, api, authHeaders, el, openEvents, plural, setCsrf, whenUnauthorized } from "./common.js";
import * as i18n from "./i18n/i18n.js";
import { qrSvg } from "./qr.js";

const $ = (id) => document.getElementById(id);
const errorBox = $("error");
const meters = { sources: new Map(), sinks: new Map() };
let status = null;
let statusAt = 0;
let sinks = [];
let sources = [];

function showError(err) {
  errorBox.textContent = err ? (err.message || String(err)) : "";
  if (err) setTimeout(() => { if (errorBox.textContent === (err.message || String(err))) errorBox.textContent = ""; }, 6000);
}

function meterFor(kind, id, label) {
  let m = meters[kind].get(id);
  if (!m) { m = new Meter(label); meters[kind].set(id, m); }
  return m;
}

// ---- login, first-time setup, logout ------------------------------------------
// The session is an HttpOnly cookie; its CSRF token goes with every change.
let started = false;
let session = {};   // /api/admin/session: the certificate's fingerprint, the listen origin

function showFingerprint() {
  // The certificate this page came over: compare it with the one the
  // browser shows (and with setup-code.txt / the appliance's log).
  const fp = session.tls_fingerprint;
  $("login-tls").hidden = !fp;
  if (fp) $("login-tls-fp").textContent = fp;
}

function showLogin(state) {
  setCsrf("");
  $("app").hidden = true;
  $("login").hidden = false;
  const setup = !state.password_set;
  $("login-title").textContent = setup ? "First-time setup" : "Log in";
  $("login-form").hidden = setup;
  $("setup-form").hidden = !setup;
  if (state.setup_code_file) $("setup-file").textContent = state.setup_code_file;
  (setup ? $("setup-code") : $("login-password")).focus();
}

function loggedIn(csrf) {
  setCsrf(csrf);
  $("login").hidden = true;
  $("login-error").textContent = "";
  $("app").hidden = false;
  if (!started) { started = true; start(); }
}

async function checkSession() {
  try {
    const state = await api("/api/admin/session");
    session = state;
    showFingerprint();
    if (state.admin) loggedIn(state.csrf); else showLogin(state);
  } catch (err) {
    $("login").hidden = false;
    $("login-error").textContent = `Cannot reach the appliance: ${err.message}`;
    setTimeout(checkSession, 3000);
  }
}

async function submit(path, body) {
  $("login-error").textContent = "";
  try {
    const result = await api(path, { method: "POST", json: body });
    loggedIn(result.csrf);
  } catch (err) {
    $("login-error").textContent = err.message;
    if (err.status === 409) checkSession();  // the password was set meanwhile
  }
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  submit("/api/admin/login", { password: $("login-password").value }).then(() => { $("login-password").value = ""; });
});
$("setup-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if ($("setup-password").value !== $("setup-confirm").value) {
    $("login-error").textContent = "The two passwords differ.";
    return;
  }
  submit("/api/admin/setup", { code: $("setup-code").value, password: $("setup-password").value });
});
$("logout").addEventListener("click", async () => {
  try { await api("/api/admin/logout", { method: "POST" }); } catch { /* logged out anyway */ }
  if (events) events.close();
  started = false;
  location.reload();
});
// a 401 on any call: the session ended (expired, restart, logout elsewhere)
whenUnauthorized(() => {
  if (!$("login").hidden) return;  // a wrong password: the form shows it
  if (events) events.close();
  started = false;
  checkSession();
});

// ---- status ------------------------------------------------------------------
function fmtUptime(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s % 60} s`;
  return `${s} s`;
}

function renderStatus() {
  if (!status) return;
  const uptime = status.uptime_s + (performance.now() - statusAt) / 1000;
  const lost = (status.devices || []).filter((d) => d.state === "lost");
  const facts = [
    ["Name", status.name], ["Version", status.version], ["Uptime", fmtUptime(uptime)],
    ["Listeners", `${status.listeners.total} / ${status.max_listeners}`],
    ["Xruns", String(status.xruns.total)],
    ["Devices", lost.length ? `${lost.length} lost` : "all ok"],
  ];
  if (session.tls_fingerprint) facts.push(["HTTPS certificate (SHA-256)", session.tls_fingerprint]);
  $("facts").replaceChildren(...facts.map(([k, v]) => el("div", { class: "fact", "data-fact": k.toLowerCase() },
    el("div", { class: "k", text: k }), el("div", { class: "v", text: v }))));
  // someone guessing a secret from many addresses (the budget refused guesses lately)
  const guessing = Object.entries(status.guessing || {}).map(([secret, refused]) =>
    el("div", { class: "error", "data-guessing": secret,
      text: `Someone on the network is guessing the ${secret}: ${refused} guesses refused in the last 5 minutes. ` +
        "It is checked at most 30 times a minute; a longer secret makes guessing hopeless." +
        (secret === "PIN" ? " Listeners who scan a sign's code still get in at once; a typed PIN waits its turn." : "") }));
  // the board: a weak power supply, heat, the clock, the disk (what to do)
  const board = ((status.board || {}).advice || []).map((text) => el("div", { class: "error", "data-board": "", text }));
  $("devices").replaceChildren(...guessing, ...board, ...(status.devices || []).map((d) =>
    el("div", { class: d.state === "lost" ? "error" : "", text: `${d.kind} ${d.id}: ${d.state}${d.reason ? ` — ${d.reason}` : ""}` })));
  renderClock();
}

// ---- the box's clock: offered only while no network time keeps it ----------------
function renderClock() {
  const clock = status.clock || {};
  $("clock-offer").hidden = !clock.settable;
  if (!clock.settable) return;
  const box = new Date(clock.unix_ms + (performance.now() - statusAt));
  $("clock-facts").textContent = `The box's clock says ${box.toISOString().slice(0, 19).replace("T", " ")} UTC, ` +
    `this browser's ${new Date().toISOString().slice(0, 19).replace("T", " ")} UTC.`;
}

$("clock-set").addEventListener("click", async () => {
  try {
    await api("/api/clock", { method: "POST", json: { unix_ms: Date.now() } });
    await refreshStatus();
  } catch (err) { showError(err); }
});

async function refreshStatus() {
  try {
    status = await api("/api/status");
    statusAt = performance.now();
    renderStatus();
  } catch (err) { showError(err); }
}
setInterval(renderStatus, 1000);

// ---- sources, sinks, routes ---------------------------------------------------
function deviceTag(entity) {
  const st = entity.device_state || { state: "ok" };
  const parts = [];
  if (entity.kind === "alsa") parts.push(entity.device);
  if (entity.kind === "tone") parts.push(`${entity.tone_hz} Hz tone`);
  if (entity.kind === "clicks") parts.push(`clicks every ${entity.click_interval_ms} ms`);
  if (entity.kind === "opus") parts.push(`Opus ${Math.round(entity.bitrate / 1000)} kb/s, ${entity.frame_ms} ms`);
  if (entity.kind === "scream" || entity.kind === "rtp") parts.push(...networkTag(entity));
  if (entity.kind === "whip") parts.push(...whipTag(entity));
  parts.push(st.state === "ok" ? "ok" : `lost: ${st.reason || ""}`);
  if (entity.xruns) parts.push(plural(entity.xruns, "xrun", "xruns"));
  return el("span", { class: `tag ${st.state === "ok" ? "ok" : "lost"}`, text: parts.join(" · ") });
}

/** A network source: where it listens, what it hears, what it refuses. */
function networkTag(entity) {
  const where = entity.address.includes(":") ? `[${entity.address}]` : entity.address || "*";
  const what = entity.kind === "rtp" ? `RTP ${entity.encoding}/${entity.clock_rate}/${entity.stream_channels} PT ${entity.payload_type}` : "Scream";
  const parts = [`${what} ${where}:${entity.port}${entity.interface ? ` on ${entity.interface}` : ""}`];
  const n = entity.network;
  if (!n) return parts;
  if (!n.receiving) parts.push(n.rate && n.sender ? `not receiving (last from ${n.sender})` : "nothing received yet");
  else parts.push(`${n.rate / 1000} kHz${n.bits ? ` ${n.bits}-bit` : ""} ${n.channels} ch from ${n.sender}`);
  if (n.jitter_ms) parts.push(`jitter ${n.jitter_ms.toFixed(1)} ms`);
  if (n.correction_ppm) parts.push(`sender's clock ${n.correction_ppm > 0 ? "+" : ""}${n.correction_ppm.toFixed(0)} ppm`);
  if (n.buffered_ms !== null) parts.push(`${n.buffered_ms.toFixed(0)} ms buffered`);
  if (n.refused) parts.push(`${n.refused} refused (last from ${n.refused_from}: not in allow_from)`);
  if (!entity.allow_from.length && !n.rate && !/^(22[4-9]|23\d|ff)/i.test(entity.address))
    parts.push("allow_from is empty: nobody may send to a unicast source");
  if (n.malformed) parts.push(`${n.malformed} not Scream`);
  if (n.lost || n.late || n.reordered) parts.push(`${n.lost} lost, ${n.late} late, ${n.reordered} reordered`);
  if (n.other_program) parts.push(`${n.other_program} of another program${n.program_refused ? ` (${n.program_refused})` : ""}`);
  return parts;
}

/** A whip source: who publishes into it, what arrives. */
function whipTag(entity) {
  const n = entity.network;
  if (!n) return ["WHIP"];
  const p = n.publisher;
  const parts = [p ? `WHIP from ${p.client}: ${p.connected ? "on air" : p.state}` : "WHIP: nobody publishing"];
  if (n.receiving) parts.push(`Opus ${n.channels} ch`);
  if (n.jitter_ms) parts.push(`jitter ${n.jitter_ms.toFixed(1)} ms`);
  if (n.buffered_ms !== null) parts.push(`${n.buffered_ms.toFixed(0)} ms buffered`);
  if (n.lost || n.late) parts.push(`${n.lost} lost, ${n.late} late`);
  return parts;
}

/** Where a whip source is published from: its page (with the token in the
 *  fragment, never sent in a request) and, for OBS, its URL and token. */
function publishLinks(s) {
  const url = `${location.origin}/api/whip/${encodeURIComponent(s.id)}`;
  const page = `${location.origin}/publish/${encodeURIComponent(s.id)}#token=${s.publish_token}`;
  const renew = el("button", { class: "small", type: "button", text: "New token", "data-renew-token": s.id,
    onclick: async () => {
      if (!window.confirm("A new token: the old link and OBS's old token stop working (whoever publishes now goes on).")) return;
      const bytes = crypto.getRandomValues(new Uint8Array(24));
      const token = btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_");
      try {
        await api(`/api/sources/${encodeURIComponent(s.id)}`, { method: "PATCH", json: { publish_token: token } });
        await refreshGraph();
      } catch (err) { showError(err); }
    } });
  return el("div", { class: "hint publish-links" },
    el("a", { href: page, target: "_blank", rel: "noopener", text: "Publish page", "data-publish-page": s.id }),
    " · OBS: server ", el("code", { text: url }), " bearer token ", el("code", { text: s.publish_token }), " ", renew);
}

/** Whether anyone who may listen may hear this source on its own (off: only
 *  where a channel publishes it; docs/API.md). */
function publicToggle(s) {
  const box = el("input", { type: "checkbox", "data-public": s.id, "aria-label": `${s.name}: listeners may hear it on its own` });
  box.checked = !!s.public;
  box.addEventListener("change", async () => {
    try {
      Object.assign(s, await api(`/api/sources/${encodeURIComponent(s.id)}`, { method: "PATCH", json: { public: box.checked } }));
    } catch (err) { box.checked = !!s.public; showError(err); }
  });
  return el("label", { class: "hint" }, box, " Listeners may hear it on its own");
}

function renderSources() {
  $("sources").replaceChildren(...sources.map((s) => el("div", { class: "item", "data-source": s.id },
    el("div", { class: "title" }, el("strong", { text: s.name }), el("span", { class: "id", text: s.id }), deviceTag(s)),
    meterFor("sources", s.id, s.name).node, publicToggle(s),
    s.kind === "whip" ? publishLinks(s) : null,
    ["scream", "rtp", "whip"].includes(s.kind) ? el("div", { class: "row" }, editButton(s), removeButton(s)) : null)));
  fillSelect($("route-source"), sources);
}

/** A network source is removed here (refused while routes use it). */
function removeButton(s) {
  return el("button", { class: "small", type: "button", text: "Remove", "data-remove-source": s.id,
    onclick: async () => {
      try {
        await api(`/api/sources/${encodeURIComponent(s.id)}`, { method: "DELETE" });
        await refreshGraph();
      } catch (err) { showError(err); }
    } });
}

// ---- backup and restore -----------------------------------------------------------------
function planText(changes) {
  const lines = [];
  for (const [kind, c] of Object.entries(changes)) {
    for (const [what, ids] of Object.entries(c)) if (ids.length) lines.push(`${kind}s ${what.replace("_", " ")}: ${ids.join(", ")}`);
  }
  return lines.length ? lines.join("\n") : "Nothing changes.";
}
$("restore").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (!file) return;
  try {
    const backup = JSON.parse(await file.text());
    const plan = await api("/api/restore?dry_run=1", { method: "POST", json: backup });
    if (!window.confirm(`Restore ${file.name}?\n\n${planText(plan.changes)}`)) return;
    await api("/api/restore", { method: "POST", json: backup });
    await refreshGraph();
  } catch (err) { showError(err); }
});

// ---- updates (POST /api/update: the bundle as the body; GET /api/update: its state) ----
const MB = 1 << 20;
function updateText(u) {
  switch (u.state) {
    case "receiving": return `Receiving: ${(u.received_bytes / MB).toFixed(1)} MB`;
    case "installing": return `Installing: ${u.percent}% (${u.message || "RAUC"})`;
    case "installed": return "Installed; it is tried at the next restart (boot-slot reboot-trial).";
    case "rebooting": return "Installed: the appliance restarts into it on trial. This page reconnects when it is back.";
    case "failed": return `Failed: ${u.error}`;
    default: return "";
  }
}
function lastUpdateText(last) {
  if (!last) return "";
  const when = last.decided_at || last.installed_at || "";
  if (last.outcome === "committed") return `Last update: kept (${last.reason}) ${when}`;
  if (last.outcome === "rolled-back") return `Last update: rolled back: ${last.reason} ${when}`;
  if (last.outcome === "trial") return `Last update: installed ${when}, on trial`;
  return `Last update: installed ${when}, not tried yet`;
}
function showUpdate(u) {
  $("update-state").textContent = updateText(u);
  $("update-last").textContent = lastUpdateText(u.last_update);
  const bar = $("update-progress");
  bar.hidden = !["receiving", "installing"].includes(u.state);
  if (u.state === "installing") bar.value = u.percent;
}
async function refreshUpdate() {
  try { showUpdate(await api("/api/update")); } catch (err) { showError(err); }
}
$("update-start").addEventListener("click", () => {
  const file = $("update-file").files[0];
  if (!file) { showError(new Error("Choose a .raucb file first")); return; }
  if (!window.confirm(`Install ${file.name} and restart into it?`)) return;
  // XHR, not fetch: it reports the upload's progress
  const xhr = new XMLHttpRequest();
  const bar = $("update-progress");
  let polling = null;
  xhr.open("POST", "/api/update");
  for (const [k, v] of Object.entries(authHeaders({ "Content-Type": "application/octet-stream" }, "POST"))) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    bar.hidden = false;
    if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total;
    $("update-state").textContent = `Uploading: ${(e.loaded / MB).toFixed(1)} of ${(file.size / MB).toFixed(1)} MB`;
  };
  // once it is all sent, RAUC's progress comes from GET /api/update
  xhr.upload.onload = () => { polling = setInterval(refreshUpdate, 500); };
  xhr.onloadend = async () => {
    clearInterval(polling);
    $("update-start").disabled = false;
    if (xhr.status !== 200) showError(new Error(xhr.responseText.trim() || "the upload failed"));
    await refreshUpdate();
  };
  $("update-start").disabled = true;
  xhr.send(file);
});

// ---- adding a network source ----------------------------------------------------------
function showNetKind() {
  for (const node of document.querySelectorAll("[data-net]")) node.hidden = !node.dataset.net.split(" ").includes($("net-kind").value);
}
$("net-kind").addEventListener("change", showNetKind);
showNetKind();
// The form edits a network source too (Edit): only what changed is sent; a
// network field makes the source again with its routes (docs/API.md).
let editing = null;
function editButton(s) {
  return el("button", { class: "small", type: "button", text: "Edit", "data-edit-source": s.id,
    onclick: () => {
      editing = s;
      $("net-id").value = s.id;
      $("net-id").readOnly = true;
      $("net-name").value = s.name;
      $("net-kind").value = s.kind;
      $("net-kind").disabled = true;
      showNetKind();
      $("net-address").value = s.address;
      $("net-port").value = s.port;
      $("net-sdp").value = "";
      $("net-sdp").placeholder = "a new SDP replaces the stream's fields; empty keeps them";
      $("net-interface").value = s.interface;
      $("net-allow").value = s.allow_from.join(", ");
      $("net-latency").value = s.latency_ms;
      $("net-submit").textContent = "Save changes";
      $("net-cancel").hidden = false;
      $("net-add").scrollIntoView({ block: "nearest" });
    } });
}
function resetNetForm() {
  editing = null;
  $("net-add").reset();
  $("net-id").readOnly = false;
  $("net-kind").disabled = false;
  $("net-submit").textContent = "Add source";
  $("net-cancel").hidden = true;
  showNetKind();
}
$("net-cancel").addEventListener("click", resetNetForm);

function netFormBody() {
  const kind = $("net-kind").value;
  const body = {};
  if ($("net-name").value.trim()) body.name = $("net-name").value.trim();   // else the SDP's, or the id
  if (kind === "rtp" && $("net-sdp").value.trim()) body.sdp = $("net-sdp").value;
  if (kind === "scream") Object.assign(body, { address: $("net-address").value.trim(), port: Number($("net-port").value) });
  if (kind !== "whip") {
    body.interface = $("net-interface").value.trim();
    body.allow_from = $("net-allow").value.split(/[\s,]+/).filter(Boolean);
  }
  body.latency_ms = Number($("net-latency").value);
  return body;
}

$("net-add").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = netFormBody();
  try {
    if (editing) {
      const changed = Object.fromEntries(Object.entries(body).filter(([k, v]) => k === "sdp" ||
        JSON.stringify(v) !== JSON.stringify(editing[k])));
      if (Object.keys(changed).length)
        await api(`/api/sources/${encodeURIComponent(editing.id)}`, { method: "PATCH", json: changed });
    } else {
      const kind = $("net-kind").value;
      body.id = $("net-id").value.trim();
      if (kind !== "rtp") body.kind = kind;   // an RTP source's kind comes with its SDP
      if (kind === "rtp") body.sdp = $("net-sdp").value;
      if (!body.interface) delete body.interface;
      if (body.allow_from && !body.allow_from.length) delete body.allow_from;
      await api("/api/sources", { method: "POST", json: body });
    }
    resetNetForm();
    await refreshGraph();
  } catch (err) { showError(err); }
});

/** What listeners see of a channel (its language and description) and its
 *  alignment delay; the server checks every value (docs/API.md). */
function sinkSettings(s) {
  const field = (label, input) => el("label", { class: "field" }, el("span", { class: "hint", text: label }), input);
  const inputs = {
    delay_ms: el("input", { type: "number", min: "0", max: "500", step: "1", value: String(s.delay_ms ?? 0), "data-field": "delay_ms", "aria-label": `${s.name} alignment delay in ms` }),
  };
  if (s.kind === "opus") {
    inputs.language = el("input", { type: "text", maxlength: "35", size: "6", placeholder: "fr, pt-BR", spellcheck: "false", value: s.language || "", "data-field": "language", "aria-label": `${s.name} language (BCP 47)` });
    inputs.description = el("input", { type: "text", maxlength: "200", value: s.description || "", "data-field": "description", "aria-label": `${s.name} description` });
  }
  const saved = el("span", { class: "hint", "data-saved": s.id });
  const form = el("form", { class: "row sink-settings", "data-settings": s.id },
    inputs.language ? field("Language", inputs.language) : null,
    inputs.description ? field("Description", inputs.description) : null,
    field("Delay (ms)", inputs.delay_ms),
    el("button", { class: "small", type: "submit", text: "Save" }), saved);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const changes = {};
    for (const [key, input] of Object.entries(inputs)) {
      const value = key === "delay_ms" ? Number(input.value) : input.value.trim();
      if (value !== (s[key] ?? (key === "delay_ms" ? 0 : ""))) changes[key] = value;
    }
    if (!Object.keys(changes).length) return;
    saved.textContent = "";
    try {
      Object.assign(s, await api(`/api/sinks/${encodeURIComponent(s.id)}`, { method: "PATCH", json: changes }));
      saved.textContent = "Saved";
    } catch (err) { showError(err); }
  });
  return form;
}

function renderSinks() {
  $("sinks").replaceChildren(...sinks.map((s) => el("div", { class: "item", "data-sink": s.id },
    el("div", { class: "title" }, el("strong", { text: s.name }), el("span", { class: "id", text: s.id }),
      el("span", { class: "id", "data-listeners": s.id, text: s.kind === "opus" ? plural(s.listeners || 0, "listener", "listeners") : "HAT output" }),
      deviceTag(s)),
    meterFor("sinks", s.id, s.name).node,
    sinkSettings(s))));
  fillSelect($("route-sink"), sinks);
  fillSelect($("share-sink"), sinks.filter((s) => s.kind === "opus"));
  renderShare();
}

function fillSelect(select, list) {
  const keep = select.value;
  select.replaceChildren(...list.map((e) => el("option", { value: e.id, text: e.name })));
  if (list.some((e) => e.id === keep)) select.value = keep;
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

function routeItem(r) {
  const src = sources.find((s) => s.id === r.source_id);
  const dst = sinks.find((s) => s.id === r.sink_id);
  const number = el("input", { type: "number", min: "-60", max: "24", step: "0.5", value: String(r.gain_db), "aria-label": `${r.name} gain in dB`, "data-gain": r.id });
  const slider = el("input", { type: "range", min: "-60", max: "24", step: "0.5", value: String(r.gain_db), "aria-label": `${r.name} gain` });
  const mute = el("input", { type: "checkbox", checked: r.muted, "data-mute": r.id });
  const send = debounce(async (changes) => {
    try {
      const updated = await api(`/api/routes/${encodeURIComponent(r.id)}`, { method: "PATCH", json: changes });
      Object.assign(r, updated);
    } catch (err) { showError(err); }
  }, 120);
  slider.addEventListener("input", () => { number.value = slider.value; send({ gain_db: Number(slider.value) }); });
  number.addEventListener("change", () => {
    const v = Number(number.value);
    if (!Number.isFinite(v)) return;
    slider.value = String(v);
    send({ gain_db: v });
  });
  mute.addEventListener("change", () => send({ muted: mute.checked }));
  const remove = el("button", { class: "small danger", type: "button", text: "Remove", onclick: async () => {
    if (!confirm(`Remove the route ${r.name}?`)) return;
    try { await api(`/api/routes/${encodeURIComponent(r.id)}`, { method: "DELETE" }); await refreshGraph(); } catch (err) { showError(err); }
  } });
  return el("div", { class: "item", "data-route": r.id },
    el("div", { class: "title" }, el("strong", { text: `${src ? src.name : r.source_id} → ${dst ? dst.name : r.sink_id}` }),
      el("span", { class: "id", text: r.id + (r.source_channel ? ` · input channel ${r.source_channel}` : "") })),
    el("div", { class: "row" },
      el("div", { class: "gain" }, el("label", { text: "Gain" }), slider, number, el("span", { class: "hint", text: "dB" })),
      el("label", { class: "toggle" }, mute, "Mute"), remove));
}

async function refreshGraph() {
  try {
    [sources, sinks] = await Promise.all([api("/api/sources"), api("/api/sinks")]);
    const routes = await api("/api/routes");
    renderSources();
    renderSinks();
    fillSelect($("pub-sink"), sinks.filter((k) => k.kind === "opus"));
    refreshAnnounced();
    refreshPublications();
    fillSelect($("relay-channels"), sinks.filter((k) => k.kind === "opus"));
    refreshRelays();
    $("routes").replaceChildren(...(routes.length ? routes.map(routeItem) : [el("p", { class: "hint", text: "No routes." })]));
  } catch (err) { showError(err); }
}

// ---- publications (WHIP out) -----------------------------------------------------------
function publicationItem(p) {
  const facts = [`${p.sink_id} → ${p.url}`, p.state];
  if (p.state === "live" && p.bitrate_bps) facts.push(`${Math.round(p.bitrate_bps / 1000)} kb/s`);
  if (p.rtt_ms !== null) facts.push(`RTT ${p.rtt_ms.toFixed(0)} ms`);
  if (p.attempts > 1) facts.push(plural(p.attempts, "attempt", "attempts"));
  return el("div", { class: "item", "data-publication": p.id },
    el("div", { class: "title" }, el("strong", { text: p.id }),
      el("span", { class: `tag ${p.state === "live" ? "ok" : "lost"}`, text: facts.join(" · ") })),
    p.error && p.state !== "live" ? el("p", { class: "error", text: p.error }) : null,
    // the config file's own are changed there, not here
    p.in_config ? configTag() : el("button", { class: "small", type: "button", text: "Stop", "data-stop-publication": p.id,
      onclick: async () => {
        try {
          await api(`/api/publications/${encodeURIComponent(p.id)}`, { method: "DELETE" });
          await refreshPublications();
        } catch (err) { showError(err); }
      } }));
}

function configTag() {
  return el("span", { class: "hint", "data-in-config": "", text: "Set in the config file (change it there)" });
}

async function refreshPublications() {
  try {
    const list = await api("/api/publications");
    $("publications").replaceChildren(...(list.length ? list.map(publicationItem)
      : [el("p", { class: "hint", text: "No channel is published." })]));
  } catch (err) { showError(err); }
}
setInterval(() => { if (!$("app").hidden) refreshPublications(); }, 2000);

$("pub-add").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { id: $("pub-id").value.trim(), sink_id: $("pub-sink").value, url: $("pub-url").value.trim() };
  if ($("pub-token").value) body.token = $("pub-token").value;
  if ($("pub-relay").value.trim()) body.relay_whep_url = $("pub-relay").value.trim();
  if ($("pub-ca").value.trim()) body.tls_ca = $("pub-ca").value.trim();
  try {
    await api("/api/publications", { method: "POST", json: body });
    $("pub-add").reset();
    await refreshPublications();
  } catch (err) { showError(err); }
});

// ---- relays (Janus) -------------------------------------------------------------------
function relayItem(r) {
  const facts = [r.state, r.url];
  if (r.listen_url) facts.push(`listeners: ${r.listen_url}`);
  facts.push(`SRTP ${r.srtp}`);
  if (!r.for_listeners) facts.push("not for listeners (api_secret)");
  const carried = new Map(r.carried.map((c) => [c.sink_id, c]));
  const channels = r.channels.map((id) => {
    const c = carried.get(id);
    const sink = sinks.find((k) => k.id === id);
    const viewers = !c ? "not carried" : c.viewers === null ? "viewers unknown" : plural(c.viewers, "viewer", "viewers");
    return el("li", { "data-carried": id, text: `${sink ? sink.name : id}: ${viewers}` });
  });
  return el("div", { class: "item", "data-relay": r.id },
    el("div", { class: "title" }, el("strong", { text: r.id }),
      el("span", { class: `tag ${r.state === "up" ? "ok" : "lost"}`, "data-relay-state": r.id, text: facts.join(" · ") }),
      el("span", { class: "id", text: plural(r.viewers, "viewer", "viewers") })),
    el("ul", { class: "hint" }, ...channels),
    r.error && r.state !== "up" ? el("p", { class: "error", text: r.error }) : null,
    r.in_config ? configTag() : el("button", { class: "small danger", type: "button", text: "Remove", "data-remove-relay": r.id,
      onclick: async () => {
        if (!confirm(`Remove the relay ${r.id}? Its listeners lose it.`)) return;
        try {
          await api(`/api/relays/${encodeURIComponent(r.id)}`, { method: "DELETE" });
          await refreshRelays();
        } catch (err) { showError(err); }
      } }));
}

// "relays first": a channel's new listeners go to its relays before the box fills
function relaysFirstSwitch(sink) {
  const box = el("input", { type: "checkbox", checked: !!sink.relays_first, "data-relays-first": sink.id });
  box.addEventListener("change", async () => {
    try {
      Object.assign(sink, await api(`/api/sinks/${encodeURIComponent(sink.id)}`, { method: "PATCH", json: { relays_first: box.checked } }));
    } catch (err) { box.checked = !box.checked; showError(err); }
  });
  return el("label", { class: "toggle" }, box, `${sink.name}: relays first`);
}

async function refreshRelays() {
  try {
    const list = await api("/api/relays");
    $("relays").replaceChildren(...(list.length ? list.map(relayItem)
      : [el("p", { class: "hint", text: "No relay." })]));
    // the switches of the channels relays carry, made again only when those
    // change (not under the pointer every 2 s)
    const carried = new Set(list.flatMap((r) => r.channels));
    const shown = sinks.filter((k) => carried.has(k.id));
    const switches = $("relays-first");
    if (switches.dataset.channels !== shown.map((k) => k.id).join(" ")) {
      switches.dataset.channels = shown.map((k) => k.id).join(" ");
      switches.replaceChildren(...shown.map(relaysFirstSwitch));
    }
  } catch (err) { showError(err); }
}
setInterval(() => { if (!$("app").hidden) refreshRelays(); }, 2000);

$("relay-add").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { id: $("relay-id").value.trim(), url: $("relay-url").value.trim(),
    channels: [...$("relay-channels").selectedOptions].map((o) => o.value), srtp: $("relay-srtp").value };
  if ($("relay-listen-url").value.trim()) body.listen_url = $("relay-listen-url").value.trim();
  if ($("relay-secret").value) body.api_secret = $("relay-secret").value;
  if ($("relay-admin-key").value) body.admin_key = $("relay-admin-key").value;
  if ($("relay-ca").value.trim()) body.tls_ca = $("relay-ca").value.trim();
  try {
    await api("/api/relays", { method: "POST", json: body });
    $("relay-add").reset();
    await refreshRelays();
  } catch (err) { showError(err); }
});

// ---- streams announced on the network (SAP) ------------------------------------------
function sourceIdFor(name) {
  const base = (name || "stream").toLowerCase().replace(/[^a-z0-9_.-]+/g, "-").replace(/^[^a-z0-9]+/, "").slice(0, 40) || "stream";
  let id = base;
  for (let n = 2; sources.some((s) => s.id === id); n++) id = `${base}-${n}`;
  return id;
}

async function refreshAnnounced() {
  try {
    const { streams } = await api("/api/announcements");
    const items = streams.map((s) => {
      const add = el("button", { class: "small", type: "button", text: "Add as source", "data-add-stream": s.id });
      add.addEventListener("click", async () => {
        try {
          await api("/api/sources", { method: "POST", json: { id: sourceIdFor(s.name), sdp: s.sdp } });
          await refreshGraph();
        } catch (err) { showError(err); }
      });
      const facts = `${s.format} · ${s.address}:${s.port} · from ${s.origin}${s.refclk && s.refclk.startsWith("ptp") ? " · PTP clock" : ""}`;
      return el("div", { class: "item" },
        el("div", { class: "title" }, el("strong", { text: s.name || "(no name)" }), el("span", { class: "id", text: facts })), add);
    });
    $("announced").replaceChildren(...(items.length ? items : [el("p", { class: "hint", text: "None heard yet." })]));
  } catch (err) { showError(err); }
}
setInterval(() => { if (!document.hidden && session && session.admin) refreshAnnounced(); }, 5000);

$("route-add").addEventListener("submit", async (e) => {
  e.preventDefault();
  const source_id = $("route-source").value, sink_id = $("route-sink").value;
  if (!source_id || !sink_id) return;
  let id = `${source_id}-${sink_id}`;
  try {
    await api("/api/routes", { method: "POST", json: { id, source_id, sink_id } });
    await refreshGraph();
  } catch (err) { showError(err); }
});

// ---- share link and QR code -------------------------------------------------------
function renderShare() {
  const id = $("share-sink").value;
  if (!id) { $("share-link").textContent = "No channel to share."; $("share-qr").replaceChildren(); return; }
  // listeners use plain HTTP (no certificate warning on their phones)
  const link = `${session.listen_origin || location.origin}/listen/${encodeURIComponent(id)}`;
  // the code opens the channel without typing the PIN (see /signs)
  const scanned = session.venue_key ? `${link}#key=${session.venue_key}` : link;
  $("share-link").textContent = link;
  $("share-open").href = scanned;
  $("share-qr").innerHTML = qrSvg(scanned);
  $("share-qr").dataset.link = scanned;
}
$("share-sink").addEventListener("change", renderShare);
$("share-copy").addEventListener("click", async () => {
  const text = $("share-link").textContent;
  try {
    await navigator.clipboard.writeText(text); // needs a secure context
  } catch {
    const area = el("textarea", { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  $("share-copy").textContent = "Copied";
  setTimeout(() => { $("share-copy").textContent = "Copy link"; }, 1500);
});

// ---- mixer ------------------------------------------------------------------------
function mixerControl(c) {
  const key = c.index ? `${c.name},${c.index}` : c.name;
  const send = debounce(async (changes) => {
    try { await api(`/api/mixer/controls/${encodeURIComponent(key)}`, { method: "PATCH", json: changes }); } catch (err) { showError(err); refreshMixer(); }
  }, 120);
  const rows = [];
  const volumeRow = (label, values, field) => {
    const v = Math.round(values.reduce((a, b) => a + b, 0) / values.length);
    const out = el("span", { class: "db", text: `${v}%` });
    const slider = el("input", { type: "range", min: "0", max: "100", step: "1", value: String(v), "aria-label": `${c.name} ${label}`, "data-mixer": `${key}:${field}` });
    slider.addEventListener("input", () => { out.textContent = `${slider.value}%`; send({ [field]: Number(slider.value) }); });
    rows.push(el("div", { class: "row" }, el("label", { text: label }), slider, out));
  };
  const switchRow = (label, values, field, invert = false) => {
    const box = el("input", { type: "checkbox", checked: invert ? !values[0] : values[0], "data-mixer": `${key}:${field}` });
    box.addEventListener("change", () => send({ [field]: invert ? !box.checked : box.checked }));
    rows.push(el("label", { class: "toggle" }, box, label));
  };
  if (c.playback?.volume) volumeRow("Volume", c.playback.volume, "playback_volume");
  if (c.playback?.mute) switchRow("On", c.playback.mute, "playback_mute", true);
  if (c.capture?.volume) volumeRow("Capture gain", c.capture.volume, "capture_volume");
  if (c.capture?.switch) switchRow("Capture on", c.capture.switch, "capture_switch");
  if (c.enum) {
    const select = el("select", { "aria-label": c.name, "data-mixer": `${key}:enum` },
      ...c.enum.options.map((o) => el("option", { value: o, text: o })));
    select.value = c.enum.value;
    select.addEventListener("change", () => send({ enum: select.value }));
    rows.push(el("div", { class: "row" }, el("label", { text: "Input" }), select));
  }
  return el("div", { class: "item", "data-control": key }, el("div", { class: "title" }, el("strong", { text: c.name })), ...rows);
}

async function refreshMixer() {
  try {
    const m = await api("/api/mixer");
    $("mixer-device").value = m.device;
    $("mixer").replaceChildren(...(m.available
      ? (m.controls.length ? m.controls.map(mixerControl) : [el("p", { class: "hint", text: "This device has no controls." })])
      : [el("p", { class: "hint", text: `No mixer: ${m.error}` })]));
  } catch (err) { showError(err); }
}
$("mixer-device-set").addEventListener("click", async () => {
  try {
    await api("/api/mixer", { method: "PATCH", json: { device: $("mixer-device").value.trim() } });
    await refreshMixer();
  } catch (err) { showError(err); }
});

// ---- live events ----------------------------------------------------------------
const live = $("live");
let events = null;
const openAdminEvents = () => openEvents({
  levels: (data) => {
    for (const kind of ["sources", "sinks"]) {
      for (const [id, level] of Object.entries(data[kind] || {})) meterFor(kind, id, id).update(level);
    }
  },
  listeners: (data) => {
    for (const [id, n] of Object.entries(data.sinks || {})) {
      const node = document.querySelector(`[data-listeners="${CSS.escape(id)}"]`);
      if (node) node.textContent = plural(n, "listener", "listeners");
      const sink = sinks.find((s) => s.id === id);
      if (sink) sink.listeners = n;
    }
    if (status) { status.listeners = data; renderStatus(); }
  },
  device: () => { refreshStatus(); refreshGraph(); },
  xrun: (data) => {
    if (status) { status.xruns.total += 1; renderStatus(); }
    const list = data.kind === "source" ? sources : sinks;
    const e = list.find((x) => x.id === data.id);
    if (e) e.xruns = data.total;
  },
}, (on) => { live.className = "dot " + (on ? "live" : "down"); },
{ onDenied: async () => { events.close(); started = false; checkSession(); } });

function refreshAll() { refreshStatus(); refreshGraph(); refreshMixer(); }
let statusTimer = null;
async function start() {
  // the meters' words come from the message catalogues
  await i18n.use(i18n.current()).catch((err) => console.warn("messages", err));
  events = openAdminEvents();
  refreshAll();
  refreshUpdate();   // what the last update came to (after its reboot)
  clearInterval(statusTimer);
  statusTimer = setInterval(refreshStatus, 10000);
}
checkSession();
