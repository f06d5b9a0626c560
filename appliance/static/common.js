// Shared by the listen and admin pages: API calls (the admin session is an
// HttpOnly cookie plus a CSRF token sent in a header; the venue PIN is a
// cookie too), the live event stream (Server-Sent Events) and level meters.

import { t } from "./i18n/i18n.js";

let csrfToken = "";
/** The admin session's CSRF token (from /api/admin/session or a login). */
export function setCsrf(value) { csrfToken = value || ""; }

/** Headers for a request; credentials travel as cookies, so nothing to add
 *  but the CSRF token on state-changing admin requests. */
export function authHeaders(headers = {}, method = "GET") {
  return csrfToken && !["GET", "HEAD", "OPTIONS"].includes(method)
    ? { ...headers, "X-CSRF-Token": csrfToken } : headers;
}

let asking = null;
let acceptedAt = -Infinity;
/** Ask for the venue PIN (once at a time) and send it; resolves true when
 *  the appliance accepted it (it then sets a cookie). A request refused just
 *  before a PIN was accepted (the channel list and the event stream start
 *  together) gets true at once: it should try again with the new cookie,
 *  not ask the listener a second time. */
export function askPin(reason = "This appliance needs the venue PIN to listen.", ask = "Enter the PIN:") {
  if (!asking && performance.now() - acceptedAt < 5000) return Promise.resolve(true);
  if (!asking) {
    asking = new Promise((resolve) => {
      setTimeout(async () => {
        const value = window.prompt(`${reason}\n${ask}`, "");
        let ok = false;
        if (value) {
          const r = await fetch("/api/listen/pin", { method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ pin: value.trim() }) }).catch(() => null);
          ok = Boolean(r && r.ok);
          if (ok) acceptedAt = performance.now();
        }
        asking = null;
        resolve(ok);
      }, 0);
    });
  }
  return asking;
}

/** A sign's code opens the page with the PIN's long form in the fragment
 *  (#key=…, never sent in a request): trade it for the listen cookie and
 *  drop it from the address (a shared link or a screenshot carries none).
 *  It has no guess budget, so it gets in while strangers guess at the PIN. */
export async function useVenueKey() {
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  if (!key) return;
  history.replaceState(null, "", location.pathname + location.search);
  const r = await fetch("/api/listen/pin", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ pin: key }) }).catch(() => null);
  if (r && r.ok) acceptedAt = performance.now();
}

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** Called with the ApiError of every 401 (the admin page shows its login). */
let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

/** fetch() on the API (JSON in and out, errors as ApiError). */
export async function api(path, { method = "GET", json, headers = {}, body, raw = false } = {}) {
  const init = { method, headers: authHeaders(headers, method), cache: "no-store", credentials: "same-origin" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(path, init);
  if (raw) return response;
  if (!response.ok) {
    const error = new ApiError(response.status, (await response.text()).trim() || response.statusText);
    if (response.status === 401) onUnauthorized(error);
    throw error;
  }
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** The live event stream. `handlers` maps event names to functions of the
 *  parsed data; `onstate(live)` follows the connection. EventSource
 *  reconnects by itself (the server asks for 2 s). */
export function openEvents(handlers, onstate = () => {}, { path = "/api/events", onDenied = async () => {} } = {}) {
  let source = null;
  let failures = 0;
  let closed = false;
  const connect = () => {
    if (closed) return;
    source = new EventSource(path);
    source.onopen = () => { failures = 0; onstate(true); };
    source.onerror = async () => {
      onstate(false);
      if (source.readyState === EventSource.CLOSED) {
        // closed for good: a 401 (logged out, PIN needed) or the server went away
        failures += 1;
        const stop = new AbortController();
        const probe = await fetch(path, { cache: "no-store", signal: stop.signal }).catch(() => null);
        stop.abort();
        if (probe && probe.status === 401) await onDenied();
        setTimeout(connect, Math.min(10000, 1000 * failures));
      }
    };
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, (e) => { try { fn(JSON.parse(e.data)); } catch (err) { console.error(err); } });
    }
  };
  connect();
  return {
    close: () => { closed = true; if (source) source.close(); },
    reconnect: () => { closed = false; if (source) source.close(); connect(); },
  };
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

const FLOOR_DB = -60;
const pct = (db) => Math.max(0, Math.min(100, ((db - FLOOR_DB) / -FLOOR_DB) * 100));

/** A peak/RMS meter (dBFS) with one bar per channel and a clip light that
 *  holds for 2 s. `update({peak_dbfs: [...], rms_dbfs: [...]})`. */
export class Meter {
  constructor(label = "") {
    this.bars = [];
    this.barsBox = el("div", { class: "bars" });
    this.db = el("span", { class: "db", text: "—" });
    this.clip = el("span", { class: "clip" });
    this.label = label;
    this.node = el("div", { class: "meter", role: "meter" }, this.barsBox, this.db, this.clip);
    this.translate();
    this.clipUntil = 0;
    this.updates = 0;
    this.last = null;
  }

  /** Its words in the page's language (again after a language switch). */
  translate() {
    this.clip.textContent = t("meter_clip");
    this.clip.title = t("meter_clip_title");
    this.node.setAttribute("aria-label", this.label ? t("meter_label", { name: this.label }) : t("meter_label_plain"));
    if (this.last) this.showDb();
  }

  showDb() {
    const { peak, rms } = this.last;
    this.db.textContent = peak <= -119 ? t("meter_silent") : `${rms.toFixed(1)} dB`;
    this.db.title = t("meter_title", { peak: peak.toFixed(1), rms: rms.toFixed(1) });
  }

  ensure(channels) {
    while (this.bars.length < channels) {
      const cover = el("div", { class: "cover" });
      const peak = el("div", { class: "peak" });
      const bar = el("div", { class: "bar" }, cover, peak);
      this.barsBox.append(bar);
      this.bars.push({ cover, peak });
    }
  }

  update(level) {
    const peaks = level.peak_dbfs || [];
    const rmss = level.rms_dbfs || [];
    this.ensure(Math.max(1, peaks.length));
    peaks.forEach((p, i) => {
      const r = rmss[i] ?? p;
      this.bars[i].cover.style.left = `${pct(r)}%`;
      this.bars[i].peak.style.left = `calc(${pct(p)}% - 2px)`;
    });
    const peak = peaks.length ? Math.max(...peaks) : -120;
    const rms = rmss.length ? Math.max(...rmss) : -120;
    this.last = { peak, rms };
    this.showDb();
    const now = performance.now();
    if (peak >= -0.1) this.clipUntil = now + 2000;
    this.clip.classList.toggle("on", now < this.clipUntil);
    this.updates += 1;
    this.node.dataset.peak = peak.toFixed(1);
    this.node.dataset.rms = rms.toFixed(1);
    this.node.dataset.updates = String(this.updates);
  }
}

export function plural(n, one, many) { return `${n} ${n === 1 ? one : many}`; }
