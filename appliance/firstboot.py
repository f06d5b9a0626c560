"""The first-boot settings of an SD card: one schema, one set of checks, one
way to edit the card's files.

``appliance.toml`` on the card's FAT partition says how the appliance joins
the network and who administers it::

    hostname = "studio"
    wifi_country = "GB"
    wifi_ssid = "Home"
    wifi_psk = "passphrase"
    wifi_mode = "client"             # or "hotspot": its own Wi-Fi network
    wifi_channel = ""                # hotspot only; empty: 6
    hat = "none"
    ssh_key = "ssh-ed25519 AAAA... me@laptop"

    [admin]
    token = ""                       # bearer token for scripts
    password_hash = "scrypt$..."     # appliance.passwords hash, never a password

Two programs know it, and both use this module: ``flash.sh`` (through
``python3 appliance/firstboot.py``, before and while it writes a card) and the
image's ``appliance-firstboot`` (at boot). Standard library only, and it never
imports the ``appliance`` package itself (whose ``__init__`` loads the engine),
so both can run it by path on a machine without the appliance's dependencies.

Command line, for flash.sh (settings arrive on stdin as NUL-separated
``option=value`` pairs named like flash.sh's options, so no secret is in argv)::

    firstboot.py check            check the values alone (before anything is written)
    firstboot.py card DIR         apply them to DIR/appliance.toml and DIR/config.txt,
                                  copied off a card with its hats.txt and appliance-release.txt
    firstboot.py hash-password    stdin: a password; stdout: its scrypt hash

A file named ``factory-reset`` next to ``appliance.toml`` asks for a factory
reset: at the next boot ``appliance-firstboot`` wipes the appliance's state
(``factory_reset`` below) before it applies the settings, so the box comes up
as on its first boot.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import stat
import sys
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

if __package__:
    from . import passwords
else:
    # Run by path (flash.sh) or loaded by path (appliance-firstboot): load the
    # sibling module the same way, without importing the package.
    _spec = importlib.util.spec_from_file_location(
        "_appliance_passwords", Path(__file__).with_name("passwords.py"))
    passwords = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(passwords)

__all__ = ["Settings", "SettingsError", "Hat", "validate", "read_hats", "set_hat_overlay",
           "edit_settings", "toml_str", "card_base", "check_password", "FIELDS",
           "HAT_BEGIN", "HAT_END", "MAX_FILE_BYTES", "hotspot_files", "wifi_psk_hex",
           "HOTSPOT_ADDRESS", "HOTSPOT_INTERFACE", "HOTSPOT_FILES", "FACTORY_RESET",
           "KEPT_ON_RESET", "factory_reset"]

HAT_BEGIN = "# >>> appliance hat (managed by flash.sh and appliance-firstboot)"
HAT_END = "# <<< appliance hat"
# appliance.toml is a few hundred bytes; anything near this is not one.
MAX_FILE_BYTES = 64 * 1024


class SettingsError(ValueError):
    """A setting is not valid. ``field`` is its dotted name in appliance.toml
    (``hostname``, ``admin.token``); ``render`` words the message for another
    audience (flash.sh names its options instead)."""

    def __init__(self, field: str, problem: str, value: Any = ..., *, secret: bool = False):
        self.field, self.problem, self.value, self.secret = field, problem, value, secret
        super().__init__(self.render())

    def render(self, label: Callable[[str], str] = str) -> str:
        # `{other_field}` in the problem names another field the same way;
        # the value is never formatted, so it cannot inject anything.
        problem = re.sub(r"\{([a-z_.]+)\}", lambda m: label(m.group(1)), self.problem)
        if self.value is ... or self.secret:
            return f"{label(self.field)}: {problem}"
        return f"{label(self.field)} {_show(self.value)}: {problem}"


def _show(value: Any) -> str:
    """repr, cut short: control characters come out escaped, huge values short."""
    r = repr(value)
    return r if len(r) <= 60 else r[:50] + "..." + r[-6:]


# --- the fields -------------------------------------------------------------------

_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_COUNTRY = re.compile(r"[A-Z]{2}")
_PSK = re.compile(r"[ -~]{8,63}|[0-9a-fA-F]{64}")
_HAT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_TOKEN = re.compile(r"[!-~]{0,256}")
_HASH_CHARS = re.compile(r"[A-Za-z0-9+/=$]{0,512}")
_SSH_KEY = re.compile(r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|"
                      r"sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/=]+( [^\n]*)?")
_MAX_SSH_KEYS = 32


def _no_control(field: str, value: str, allow: str = "", secret: bool = False) -> None:
    """Control characters, line and paragraph separators: each could end a
    line of TOML, config.txt, wpa_supplicant.conf or authorized_keys."""
    for ch in value:
        if ch in allow:
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise SettingsError(field, f"control characters (here {ch!r}) are not allowed",
                                value, secret=secret)


def _length(field: str, value: str, most: int, secret: bool = False) -> None:
    if len(value) > most:
        raise SettingsError(field, f"is longer than {most} characters", value, secret=secret)


def _hostname(v: str) -> str:
    _length("hostname", v, 63)
    if not _HOSTNAME.fullmatch(v):
        raise SettingsError("hostname", "use 1-63 of a-z, 0-9 and '-' (not first or last)", v)
    return v


def _wifi_country(v: str) -> str:
    _length("wifi_country", v, 2)
    v = v.upper()
    if v and not _COUNTRY.fullmatch(v):
        raise SettingsError("wifi_country", "use a two-letter ISO 3166 code like GB, DE or US", v)
    return v


def _wifi_ssid(v: str) -> str:
    _length("wifi_ssid", v, 32)
    _no_control("wifi_ssid", v)
    if len(v.encode()) > 32:
        raise SettingsError("wifi_ssid", "is longer than 32 bytes", v)
    return v


def _wifi_psk(v: str) -> str:
    _length("wifi_psk", v, 64, secret=True)
    if v and not _PSK.fullmatch(v):
        raise SettingsError("wifi_psk", "must be 8-63 printable ASCII characters (or 64 hex digits)",
                            secret=True)
    return v


WIFI_MODES = ("client", "hotspot")
# 2.4 GHz channels 1-13, and the 5 GHz ones that need no radar detection
# (DFS): what every country allows an access point to use.
_CHANNELS_24 = tuple(str(c) for c in range(1, 14))
_CHANNELS_5 = ("36", "40", "44", "48")


def _wifi_mode(v: str) -> str:
    _length("wifi_mode", v, 16)
    if v not in WIFI_MODES:
        raise SettingsError("wifi_mode", "use \"client\" (join wifi_ssid) or \"hotspot\" "
                            "(be the access point wifi_ssid)", v)
    return v


def _wifi_channel(v: str) -> str:
    _length("wifi_channel", v, 3)
    if v and v not in _CHANNELS_24 + _CHANNELS_5:
        raise SettingsError("wifi_channel", "use 1-13 (2.4 GHz) or 36, 40, 44, 48 (5 GHz), "
                            "or leave it empty", v)
    return v


def _hat(v: str) -> str:
    _length("hat", v, 63)
    if not _HAT.fullmatch(v):
        raise SettingsError("hat", "not a HAT name (see hats.txt on the card)", v)
    return v


def _ssh_key(v: str) -> str:
    _length("ssh_key", v, 16 * 1024)
    _no_control("ssh_key", v, allow="\n")
    if "PRIVATE KEY" in v:
        raise SettingsError("ssh_key", "that is a private key; give the .pub file")
    keys = [k.strip() for k in v.splitlines() if k.strip()]
    if len(keys) > _MAX_SSH_KEYS:
        raise SettingsError("ssh_key", f"more than {_MAX_SSH_KEYS} keys")
    for k in keys:
        if not _SSH_KEY.fullmatch(k):
            raise SettingsError("ssh_key", "not an OpenSSH public key (give the .pub file or its line)", k)
    return "\n".join(keys)


def _token(v: str) -> str:
    _length("admin.token", v, 256, secret=True)
    if not _TOKEN.fullmatch(v) or '"' in v or "\\" in v:
        raise SettingsError("admin.token", "use up to 256 printable ASCII characters, "
                            "no spaces, quotes or backslashes", secret=True)
    return v


def _password_hash(v: str) -> str:
    # Never shown: someone may have typed a password here by hand.
    if v and not (_HASH_CHARS.fullmatch(v) and passwords.is_password_hash(v)):
        raise SettingsError("admin.password_hash", "not a password hash: set it with "
                            "flash.sh --admin-password, never as a clear password", secret=True)
    return v


@dataclass(frozen=True)
class Field:
    name: str        # dotted name in appliance.toml
    default: str
    check: Callable[[str], str]   # normalised value, or SettingsError


FIELDS: tuple[Field, ...] = (
    Field("hostname", "appliance", _hostname),
    Field("wifi_country", "", _wifi_country),
    Field("wifi_ssid", "", _wifi_ssid),
    Field("wifi_psk", "", _wifi_psk),
    Field("wifi_mode", "client", _wifi_mode),
    Field("wifi_channel", "", _wifi_channel),
    Field("hat", "none", _hat),
    Field("ssh_key", "", _ssh_key),
    Field("admin.token", "", _token),
    Field("admin.password_hash", "", _password_hash),
)
_BY_NAME = {f.name: f for f in FIELDS}
TABLES = ("admin",)


@dataclass(frozen=True)
class Settings:
    hostname: str = "appliance"
    wifi_country: str = ""
    wifi_ssid: str = ""
    wifi_psk: str = ""
    wifi_mode: str = "client"
    wifi_channel: str = ""
    hat: str = "none"
    ssh_key: str = ""
    admin_token: str = ""
    admin_password_hash: str = ""

    @property
    def ssh_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.ssh_key.split("\n") if k)

    def values(self) -> dict[str, str]:
        """By dotted field name."""
        return {f.name: getattr(self, f.name.replace(".", "_")) for f in FIELDS}


@dataclass(frozen=True)
class Hat:
    name: str
    bases: tuple[str, ...]
    lines: tuple[str, ...]   # config.txt lines
    description: str


def flatten(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Parsed TOML to {dotted name: value}; unknown keys and non-tables are errors."""
    if not isinstance(raw, Mapping):
        raise SettingsError("appliance.toml", "must be a table of settings")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in TABLES:
            if not isinstance(value, Mapping):
                raise SettingsError(key, "must be a table ([" + key + "])", value)
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    unknown = [k for k in out if k not in _BY_NAME]
    if unknown:
        raise SettingsError(unknown[0], "unknown key (known keys: "
                            + ", ".join(f.name for f in FIELDS) + ")")
    return out


def validate(raw: Mapping[str, Any], hats: Mapping[str, Hat] | None = None,
             base: str | None = None) -> Settings:
    """Check parsed appliance.toml (nested tables, or already dotted) and
    return the normalised settings. With ``hats`` the HAT must be one of them,
    and with ``base`` one that works on that base."""
    flat = flatten(raw)
    values = {}
    for f in FIELDS:
        v = flat.get(f.name, f.default)
        if not isinstance(v, str):
            raise SettingsError(f.name, "must be a string in quotes", v)
        values[f.name] = f.check(v or f.default)
    if values["wifi_ssid"] and not values["wifi_country"]:
        raise SettingsError("wifi_ssid", "needs {wifi_country} (Wi-Fi stays off without a country)")
    if values["wifi_psk"] and not values["wifi_ssid"]:
        raise SettingsError("wifi_psk", "needs {wifi_ssid}")
    if values["wifi_mode"] == "hotspot" and not values["wifi_ssid"]:
        raise SettingsError("wifi_mode", "hotspot needs {wifi_ssid} (the name of its network)")
    if values["wifi_channel"] and values["wifi_mode"] != "hotspot":
        raise SettingsError("wifi_channel", "only for wifi_mode = \"hotspot\" (a client follows "
                            "its network's channel)")
    if hats is not None:
        hat = hats.get(values["hat"])
        if hat is None:
            raise SettingsError("hat", f"is not known to this image (known: {', '.join(hats)})",
                                values["hat"])
        if base is not None and base not in hat.bases:
            raise SettingsError("hat", f"does not work on this image's base ({base}); it needs an "
                                f"image built with: {', '.join(hat.bases)} (see docs/IMAGE.md)",
                                values["hat"])
    return Settings(**{k.replace(".", "_"): v for k, v in values.items()})


# --- hats.txt and config.txt --------------------------------------------------------

_CONFIG_LINE = re.compile(r"[A-Za-z0-9_]+=[A-Za-z0-9_.,:=/-]+")


def read_hats(text: str) -> dict[str, Hat]:
    """hats.txt (image/hats.tsv): name, bases, config.txt lines (;-separated),
    description, tab-separated. The file is on the card, so its lines are
    checked too before any reaches config.txt."""
    hats = {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#") or not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 4 or not _HAT.fullmatch(cols[0]):
            raise SettingsError("hats.txt", f"line {n} is not 'name<TAB>bases<TAB>lines<TAB>description'")
        lines = tuple(x for x in cols[2].split(";") if x)
        for x in lines:
            if not _CONFIG_LINE.fullmatch(x):
                raise SettingsError("hats.txt", f"line {n}: {x[:40]!r} is not a config.txt setting")
        hats[cols[0]] = Hat(cols[0], tuple(b for b in cols[1].split(",") if b), lines, cols[3])
    return hats


def set_hat_overlay(text: str, lines: tuple[str, ...] | list[str]) -> str:
    """config.txt with our managed block replaced by ``lines`` (removed when
    there are none); everything else is kept as it was."""
    out: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines():
        if block is None and line.strip() == HAT_BEGIN:
            block = [line]
        elif block is not None:
            block.append(line)
            if line.strip() == HAT_END:
                block = None
        else:
            out.append(line)
    if block is not None:
        out += block  # no end marker: not ours to delete
    while out and not out[-1].strip():
        out.pop()
    for x in lines:
        if not _CONFIG_LINE.fullmatch(x):
            raise SettingsError("hat", "overlay line is not a config.txt setting", x)
    if lines:
        out += ["", HAT_BEGIN, "[all]", *lines, HAT_END]
    return "\n".join(out) + "\n"


def card_base(release_text: str) -> str:
    """The base named in appliance-release.txt ("... (base raspios)")."""
    m = re.search(r"\(base ([a-z]+)\)", release_text)
    return m.group(1) if m else "debian"


# --- the hotspot (wifi_mode = "hotspot") --------------------------------------------
#
# The appliance is the access point: hostapd on wlan0, dnsmasq answering DHCP
# and every DNS name with its own address, nftables sending the clients'
# plain HTTP and DNS to it whatever address they asked for. The appliance's
# web app answers a request for another host with a redirect to its listen
# page, which is what makes phones open it (captive-portal detection).
# Ethernet is left alone: DHCP client as before, no DHCP server there.

HOTSPOT_INTERFACE = "wlan0"
HOTSPOT_ADDRESS = "10.42.0.1"
HOTSPOT_PREFIX = 24
_HOTSPOT_DHCP = ("10.42.0.10", "10.42.0.250")
HOTSPOT_DIR = "/etc/appliance/hotspot"


def wifi_psk_hex(ssid: str, psk: str) -> str:
    """The WPA2 key (64 hex digits) of a passphrase: what is stored on the
    appliance, never the passphrase itself."""
    if len(psk) == 64:
        return psk.lower()
    return hashlib.pbkdf2_hmac("sha1", psk.encode(), ssid.encode(), 4096, 32).hex()


def _line_safe(name: str, value: str) -> str:
    # Every value is checked by validate(); this is the last guard before a
    # config file line, for a Settings built by hand.
    if not value or any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in value) \
            or any(ch in value for ch in "\"'\\#= "):
        raise SettingsError(name, "cannot be written into a configuration line", value)
    return value


HOTSPOT_FILES = ("hostapd.conf", "hostapd-sae.conf", "dnsmasq.conf", "hotspot.nft")


def hotspot_files(s: Settings) -> dict[str, str]:
    """The hotspot's configuration from checked settings: file name (in
    HOTSPOT_DIR) -> contents. The SSID goes in hex; the country and the
    channel are from fixed sets. With a passphrase, ``hostapd.conf`` is
    WPA2-PSK and holds only the derived key; ``hostapd-sae.conf`` is WPA2 +
    WPA3 (SAE, transition mode: PMF optional, required for SAE), used where
    the radio can do SAE as an access point (the image's hotspot-hostapd
    decides at start). SAE needs the passphrase itself, so that file holds
    it, as checked printable ASCII on a line of its own (hostapd takes the
    rest of a line as the value). A 64-hex-digit key allows WPA2 only."""
    if s.wifi_mode != "hotspot":
        raise SettingsError("wifi_mode", "is not \"hotspot\"", s.wifi_mode)
    country = _line_safe("wifi_country", _wifi_country(s.wifi_country))
    channel = _line_safe("wifi_channel", _wifi_channel(s.wifi_channel) or "6")
    ssid = _wifi_ssid(s.wifi_ssid)
    if not ssid:
        raise SettingsError("wifi_ssid", "the hotspot needs a network name")
    _wifi_psk(s.wifi_psk)
    band = "a" if channel in _CHANNELS_5 else "g"
    lines = [
        "# Written by appliance-firstboot from appliance.toml (wifi_mode = \"hotspot\").",
        f"interface={HOTSPOT_INTERFACE}", "driver=nl80211", "ctrl_interface=/run/hostapd",
        # hex: no character of the name can be read as configuration
        f"ssid2={ssid.encode().hex()}", "utf8_ssid=1",
        f"country_code={country}", "ieee80211d=1",
        f"hw_mode={band}", f"channel={channel}", "ieee80211n=1", "wmm_enabled=1",
        "auth_algs=1", "ignore_broadcast_ssid=0",
        # Listeners need the appliance, not each other.
        "ap_isolate=1",
    ]
    common = list(lines)
    if s.wifi_psk:
        lines += ["wpa=2", "wpa_key_mgmt=WPA-PSK", "rsn_pairwise=CCMP",
                  f"wpa_psk={wifi_psk_hex(ssid, s.wifi_psk)}"]
    hostapd = "\n".join(lines) + "\n"
    sae = None
    if s.wifi_psk and len(s.wifi_psk) != 64:
        if not re.fullmatch(r"[ -~]{8,63}", s.wifi_psk):   # the last guard before the line
            raise SettingsError("wifi_psk", "cannot be written into a configuration line",
                                secret=True)
        sae = "\n".join(common + [
            "wpa=2", "wpa_key_mgmt=WPA-PSK SAE", "rsn_pairwise=CCMP",
            # WPA2 clients without protected management frames still join;
            # WPA3 (SAE) ones must use them
            "ieee80211w=1", "sae_require_mfp=1",
            f"wpa_passphrase={s.wifi_psk}"]) + "\n"
    lo, hi = _HOTSPOT_DHCP
    dnsmasq = "\n".join([
        "# Written by appliance-firstboot: DHCP and DNS for the hotspot only.",
        f"interface={HOTSPOT_INTERFACE}", "bind-dynamic",
        "no-resolv", "no-hosts", "no-poll",
        # Every name is the appliance: a phone's captive-portal probe
        # (captive.apple.com, connectivitycheck.gstatic.com, ...) reaches it.
        f"address=/#/{HOTSPOT_ADDRESS}",
        f"dhcp-range={lo},{hi},255.255.255.0,1h",
        f"dhcp-option=option:router,{HOTSPOT_ADDRESS}",
        f"dhcp-option=option:dns-server,{HOTSPOT_ADDRESS}",
        "dhcp-authoritative", "dhcp-rapid-commit",
        "dhcp-leasefile=/run/appliance-hotspot/dnsmasq.leases",
        "",
    ])
    a = HOTSPOT_ADDRESS
    nft = "\n".join([
        "# Written by appliance-firstboot: the hotspot's clients reach only the appliance.",
        "table inet appliance_hotspot",
        "delete table inet appliance_hotspot",
        "table inet appliance_hotspot {",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        # Plain HTTP and DNS to any address (a probe by address, a phone
        # with its own DNS server) go to the appliance.
        f"\t\tiifname \"{HOTSPOT_INTERFACE}\" ip daddr != {a} tcp dport 80 dnat ip to {a}:80",
        f"\t\tiifname \"{HOTSPOT_INTERFACE}\" ip daddr != {a} meta l4proto {{ tcp, udp }} th dport 53 dnat ip to {a}:53",
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        # Never a way from the hotspot into the venue's network.
        f"\t\tiifname \"{HOTSPOT_INTERFACE}\" drop",
        f"\t\toifname \"{HOTSPOT_INTERFACE}\" drop",
        "\t}",
        "}",
        "",
    ])
    files = {"hostapd.conf": hostapd, "dnsmasq.conf": dnsmasq, "hotspot.nft": nft}
    if sae is not None:
        files["hostapd-sae.conf"] = sae
    return files


# --- writing appliance.toml ---------------------------------------------------------

def toml_str(v: str) -> str:
    """A TOML basic string; every control character escaped."""
    out = []
    for ch in v:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")


def _render(values: Mapping[str, str]) -> str:
    top = [f"{k} = {toml_str(v)}" for k, v in values.items() if "." not in k]
    out = top
    for t in TABLES:
        sub = [f"{k.split('.', 1)[1]} = {toml_str(v)}" for k, v in values.items()
               if k.startswith(t + ".")]
        if sub:
            out += ["", f"[{t}]", *sub]
    return "\n".join(out) + "\n"


def edit_settings(text: str, changes: Mapping[str, str]) -> str:
    """appliance.toml with the dotted keys in ``changes`` set, comments and
    the order of everything else kept. Falls back to writing the file afresh
    (without comments) when the edit would not read back as intended."""
    lines = text.splitlines()
    where: dict[str, int] = {}        # dotted key -> line index
    last: dict[str, int] = {}         # table -> index of its last key or header
    first_header = len(lines)
    table = ""
    for i, line in enumerate(lines):
        h = _HEADER.fullmatch(line)
        if h:
            table = h.group(1)
            first_header = min(first_header, i)
            last[table] = i
            continue
        k = _KEY.match(line)
        if k:
            where[f"{table}.{k.group(1)}" if table else k.group(1)] = i
            last[table] = i
    inserts: dict[int, list[str]] = {}
    appended: list[str] = []
    for key, value in changes.items():
        table, _, name = key.rpartition(".")
        line = f"{name} = {toml_str(value)}"
        if key in where:
            lines[where[key]] = line
        elif not table:
            at = last[""] + 1 if "" in last else first_header
            inserts.setdefault(at, []).append(line)
        elif table in last:
            inserts.setdefault(last[table] + 1, []).append(line)
        else:
            if not appended or appended[-1] != f"[{table}]":
                appended += ["", f"[{table}]"]
            appended.append(line)
    out: list[str] = []
    for i in range(len(lines) + 1):
        out += inserts.get(i, [])
        if i < len(lines):
            out.append(lines[i])
    while out and not out[-1].strip():
        out.pop()
    new = "\n".join(out + appended) + "\n"
    try:
        before = _dotted(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        before = {}
    want = {**before, **changes}
    try:
        if _dotted(tomllib.loads(new)) == want:
            return new
    except tomllib.TOMLDecodeError:
        pass
    return _render(want)


def _dotted(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def load_settings_text(data: bytes) -> dict[str, Any]:
    """Parse appliance.toml's bytes; SettingsError names what is wrong."""
    if len(data) > MAX_FILE_BYTES:
        raise SettingsError("appliance.toml", f"is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SettingsError("appliance.toml", f"is not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError("appliance.toml", f"is not valid TOML: {e}") from None


# --- the admin password --------------------------------------------------------------

def check_password(password: str) -> str:
    """The rule for a new admin password (the clear text is never stored):
    the admin page's too (appliance.passwords.password_problem)."""
    problem = passwords.password_problem(password)
    if problem:
        raise SettingsError("admin.password", problem, secret=True)
    return password


# --- flash.sh's side ------------------------------------------------------------------

# flash.sh option (without --) -> dotted field
_OPTIONS = {"hostname": "hostname", "wifi_country": "wifi_country", "wifi_ssid": "wifi_ssid",
            "wifi_psk": "wifi_psk", "wifi_mode": "wifi_mode", "wifi_channel": "wifi_channel",
            "hat": "hat", "ssh_key": "ssh_key", "token": "admin.token",
            "admin_password_hash": "admin.password_hash"}
_LABELS = {v: "--" + k.replace("_", "-") for k, v in _OPTIONS.items()}
_LABELS.update({"admin.password_hash": "--admin-password", "admin.password": "--admin-password"})


def option_label(field: str) -> str:
    return _LABELS.get(field, field)


def _read_pairs(data: bytes) -> dict[str, str]:
    """NUL-separated option=value pairs from flash.sh, as dotted fields."""
    out = {}
    for item in data.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.partition(b"=")
        name = _OPTIONS.get(key.decode("ascii", "replace"))
        if not sep or name is None:
            raise SettingsError(key.decode("ascii", "replace"), "not a setting flash.sh knows")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise SettingsError(name, "is not UTF-8 text") from None
        if name == "ssh_key" and "\n" not in text and os.path.isfile(text):
            # --ssh-key FILE: the file's keys, without comments and blank lines
            with open(text, "rb") as f:
                body = f.read(64 * 1024 + 1).decode("utf-8", "replace")
            text = "\n".join(line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#"))
            if not text:
                raise SettingsError("ssh_key", "the file holds no key", value.decode("utf-8", "replace"))
        out[name] = text
    return out


def _card(directory: Path, changes: dict[str, str]) -> list[str]:
    """Apply ``changes`` to the files copied off a card; returns the names of
    the files that changed (written in place)."""
    toml_path = directory / "appliance.toml"
    try:
        data = toml_path.read_bytes()
    except FileNotFoundError:
        raise SettingsError("appliance.toml", "not on the card's first partition: not an appliance card") from None
    hats = read_hats((directory / "hats.txt").read_text(encoding="utf-8")) \
        if (directory / "hats.txt").exists() else {}
    base = card_base((directory / "appliance-release.txt").read_text(encoding="utf-8", errors="replace")) \
        if (directory / "appliance-release.txt").exists() else "debian"
    current = flatten(load_settings_text(data))
    settings = validate({**current, **changes}, hats, base)
    normal = settings.values()
    text = data.decode("utf-8")
    new = edit_settings(text, {k: normal[k] for k in changes})
    changed = []
    if new != text:
        toml_path.write_text(new, encoding="utf-8")
        changed.append("appliance.toml")
    if "hat" in changes:
        cfg_path = directory / "config.txt"
        try:
            cfg = cfg_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SettingsError("config.txt", "not on the card") from None
        new_cfg = set_hat_overlay(cfg, hats[settings.hat].lines)
        if new_cfg != cfg:
            cfg_path.write_text(new_cfg, encoding="utf-8")
            changed.append("config.txt")
    return changed


# --- factory reset -------------------------------------------------------------------

FACTORY_RESET = "factory-reset"
# What a factory reset leaves in the state folder: RAUC's record of which
# root slot is good or bad (an update's state, not the appliance's settings)
# and ext4's own folder.
KEPT_ON_RESET = frozenset({"rauc", "lost+found"})


def factory_reset(boot: Path | str, state: Path | str, log: Callable[[str], None]) -> bool:
    """When ``boot/factory-reset`` is a file: wipe everything in ``state``
    (the saved graph and mixer, the admin password, the device key, the
    certificate, media, config.toml and the settings' stamp, so first boot
    applies ``appliance.toml`` again) except ``KEPT_ON_RESET``, then remove
    the marker. Returns whether it reset.

    Idempotent and the marker goes last: a power cut midway leaves the
    marker, and the next boot wipes what is left. Nothing outside ``state``
    is touched: symbolic links are removed, never followed (``shutil.rmtree``
    does not follow them either). Anything else named ``factory-reset`` (a
    folder, a link) is logged and left alone."""
    marker = Path(boot) / FACTORY_RESET
    try:
        mode = os.lstat(marker).st_mode
    except FileNotFoundError:
        return False
    except OSError as e:
        log(f"{FACTORY_RESET}: cannot be read ({e.strerror}): no reset")
        return False
    if not stat.S_ISREG(mode):
        log(f"{FACTORY_RESET}: is not a plain file (a folder or a link): ignored, no reset")
        return False
    log(f"{FACTORY_RESET}: found: wiping the appliance's state in {state}")
    removed, failed = 0, []
    try:
        entries = list(os.scandir(state))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if entry.name in KEPT_ON_RESET:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            failed.append(f"{entry.name} ({e.strerror})")
    if failed:
        # the marker stays: the next boot tries again
        log(f"{FACTORY_RESET}: could not remove {', '.join(failed)}; trying again at the next boot")
        return False
    try:
        os.unlink(marker)
    except FileNotFoundError:
        pass
    except OSError as e:
        log(f"{FACTORY_RESET}: the state is wiped but the file could not be removed "
            f"({e.strerror}): every boot will reset until it is deleted")
        return True
    log(f"{FACTORY_RESET}: done ({removed} entries removed); the appliance starts as new")
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: firstboot.py check | card DIR | hash-password   (settings on stdin)"
    if not argv or argv[0] not in ("check", "card", "hash-password") \
            or len(argv) != (2 if argv[0] == "card" else 1):
        print(usage, file=sys.stderr)
        return 2
    try:
        if argv[0] == "hash-password":
            line = sys.stdin.buffer.read(4096).decode("utf-8").rstrip("\r\n")
            print(passwords.hash_password(check_password(line)))
            return 0
        changes = _read_pairs(sys.stdin.buffer.read(1024 * 1024))
        if argv[0] == "check":
            validate(changes)
        else:
            for name in _card(Path(argv[1]), changes):
                print(name)
    except SettingsError as e:
        print(e.render(option_label), file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print("--admin-password: is not UTF-8 text", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
