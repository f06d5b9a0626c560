// The pages' messages: one JSON catalogue per language next to this file
// (en.json, fr.json, ...), the same ones the server renders the page with.
// The server picks the first language (the switch's cookie, else
// Accept-Language) and writes it into <html lang dir data-languages>.

const root = document.documentElement;
const COOKIE = "appliance_lang";
let lang = root.lang || "en";
let messages = {};
let english = {};

/** code -> its own name, the catalogues the appliance has. */
export const languages = JSON.parse(root.dataset.languages || '{"en": "English"}');

export function current() { return lang; }

/** True when the listener picked the language with the switch (not just
 *  the browser's Accept-Language). */
export function chosen() { return document.cookie.split(/;\s*/).some((c) => c.startsWith(`${COOKIE}=`)); }

async function fetchCatalogue(code) {
  const response = await fetch(`/static/i18n/${code}.json`, { cache: "no-cache" });
  if (!response.ok) throw new Error(`${code}: ${response.status}`);
  return response.json();
}

/** Load a language's catalogue and make it the page's (lang, dir, cookie
 *  when `remember`). Resolves once the messages are in. */
export async function use(code, { remember = false } = {}) {
  if (!(code in languages)) code = "en";
  const [chosen, base] = await Promise.all([fetchCatalogue(code), code === "en" ? null : fetchCatalogue("en")]);
  messages = chosen;
  english = base || chosen;
  lang = code;
  root.lang = code;
  root.dir = messages._dir || "ltr";
  if (remember) document.cookie = `${COOKIE}=${code}; path=/; max-age=31536000; SameSite=Lax`;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
}

function fill(text, values) {
  return String(text).replace(/\{(\w+)\}/g, (m, name) => (name in values ? String(values[name]) : m));
}

/** A message with `{name}`s filled in (English when this language lacks it). */
export function t(key, values = {}) {
  let text = messages[key] ?? english[key] ?? key;
  if (typeof text === "object") text = text.other;
  return fill(text, values);
}

/** A message with plural forms ({"one": ..., "other": ...}) for `n`. */
export function tn(key, n, values = {}) {
  const forms = messages[key] ?? english[key] ?? {};
  const form = typeof forms === "object" ? (forms[new Intl.PluralRules(lang).select(n)] ?? forms.other) : forms;
  return fill(form ?? key, { n: n.toLocaleString(lang), ...values });
}

/** A number in the page's language. */
export function num(value, digits = 0) {
  return value.toLocaleString(lang, { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** The name of a language (a BCP 47 tag) in the page's language, or "". */
export function languageName(tag) {
  if (!tag) return "";
  try { return new Intl.DisplayNames([lang], { type: "language" }).of(tag) || tag; } catch { return tag; }
}

/** How well a channel's language tag matches the listener's preferred
 *  languages: 0 best, Infinity when it matches none. */
export function rank(tag, preferred) {
  if (!tag) return Infinity;
  const want = tag.toLowerCase();
  const primary = want.split("-")[0];
  let best = Infinity;
  preferred.forEach((p, i) => {
    const have = String(p).toLowerCase();
    if (have === want) best = Math.min(best, 2 * i);
    else if (have.split("-")[0] === primary) best = Math.min(best, 2 * i + 1);
  });
  return best;
}
