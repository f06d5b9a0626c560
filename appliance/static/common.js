// Shared by the listen and admin pages: the access token, API calls, the
// live event stream (Server-Sent Events) and level meters.

const TOKEN_KEY = "appliance.token";

export const token = {
  get() { try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; } },
  set(value) {
    try { value ? localStorage.setItem(TOKEN_KEY, value) : localStorage.removeItem(TOKEN_KEY); } catch { /* private mode */ }
  },
};

// A share link may carry ?token=...: keep it, and take it out of the address bar.
(() => {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    token.set(given);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();

export function authHeaders(headers = {}) {
  const t = token.get();
  return t ? { ...headers, Authorization: `Bearer ${t}` } : headers;
}

let asking = null;
/** Ask the person for the token (once at a time); resolves true if one was given. */
export function askToken(reason = "This appliance needs an access token.") {
  if (!asking) {
    asking = new Promise((resolve) => {
      setTimeout(() => {
        const value = window.prompt(`${reason}\nEnter the access token:`, "");
        asking = null;
        if (value) token.set(value.trim());
        resolve(Boolean(value));
      }, 0);
    });
  }
  return asking;
}

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** fetch() on the API with the token; on 401 asks for the token and retries once. */
export async function api(path, { method = "GET", json, headers = {}, body, raw = false, retry = true } = {}) {
  const init = { method, headers: authHeaders(headers), cache: "no-store" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(path, init);
  if (response.status === 401 && retry && await askToken()) {
    return api(path, { method, json, headers, body, raw, retry: false });
  }
  if (raw) return response;
  if (!response.ok) throw new ApiError(response.status, (await response.text()).trim() || response.statusText);
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** The live event stream. `handlers` maps event names to functions of the
 *  parsed data; `onstate(live)` follows the connection. EventSource
 *  reconnects by itself (the server asks for 2 s). */
export function openEvents(handlers, onstate = () => {}) {
  let source = null;
  let failures = 0;
  const connect = () => {
    const t = token.get();
    source = new EventSource("/api/events" + (t ? `?token=${encodeURIComponent(t)}` : ""));
    source.onopen = () => { failures = 0; onstate(true); };
    source.onerror = async () => {
      onstate(false);
      if (source.readyState === EventSource.CLOSED) {
        // closed for good: a 401 (wrong token) or the server went away
        failures += 1;
        const probe = await fetch("/api/status", { headers: authHeaders(), cache: "no-store" }).catch(() => null);
        if (probe && probe.status === 401) await askToken();
        setTimeout(connect, Math.min(10000, 1000 * failures));
      }
    };
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, (e) => { try { fn(JSON.parse(e.data)); } catch (err) { console.error(err); } });
    }
  };
  connect();
  return { close: () => source && source.close(), reconnect: () => { source && source.close(); connect(); } };
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
    this.clip = el("span", { class: "clip", text: "CLIP", title: "a peak reached 0 dBFS" });
    this.node = el("div", { class: "meter", role: "meter", "aria-label": label ? `${label} level` : "level" },
      this.barsBox, this.db, this.clip);
    this.clipUntil = 0;
    this.updates = 0;
    this.last = null;
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
    this.db.textContent = peak <= -119 ? "silent" : `${rms.toFixed(1)} dB`;
    this.db.title = `peak ${peak.toFixed(1)} dBFS, RMS ${rms.toFixed(1)} dBFS`;
    const now = performance.now();
    if (peak >= -0.1) this.clipUntil = now + 2000;
    this.clip.classList.toggle("on", now < this.clipUntil);
    this.updates += 1;
    this.last = { peak, rms };
    this.node.dataset.peak = peak.toFixed(1);
    this.node.dataset.rms = rms.toFixed(1);
    this.node.dataset.updates = String(this.updates);
  }
}

export function plural(n, one, many) { return `${n} ${n === 1 ? one : many}`; }
