"""Who may change the appliance and who may listen, without any web framework
(``appliance.web.auth`` and ``appliance.web.login`` put it on HTTP).

- The admin password: a scrypt hash from the config (``[admin] password_hash``,
  set by flash.sh or appliance.toml) or, when none was configured, chosen
  once on the admin page with a one-time **setup code**. That code is written
  to a file (``[admin] setup_code_file``, on the image the card's FAT
  partition) and logged; it stays the same across restarts until it is used,
  so it can be read from the card and typed in after the next boot. The
  chosen password's hash is kept in ``<state_dir>/admin-password``.
- Browser sessions: random ids (only their SHA-256 is kept), each with its
  own CSRF token, a sliding expiry and a bounded table.
- The venue PIN (``[server] listen_pin``) grants listening only; a browser
  keeps proof of it in a cookie whose value is an HMAC of the PIN.
- ``Throttle``: failed guesses (password, setup code, PIN, token) are slowed
  down per client address without ever sleeping a request.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from .errors import InvalidError
from .passwords import hash_password, is_password_hash, password_problem, verify_password
from .store import atomic_write

__all__ = ["AdminAuth", "AdminSession", "Sessions", "Throttle", "normalise_code",
           "PASSWORD_FILE"]

log = logging.getLogger("appliance.auth")

PASSWORD_FILE = "admin-password"
# the key of the browsers' device cookies (see AdminAuth.device_proof)
DEVICE_KEY_FILE = "device-key"
# a bearer token this long is no guess (2^100 and more): it has no budget
# of guesses, which anyone could spend to lock the scripts out
UNGUESSABLE_TOKEN_CHARS = 20
# no 0/O, 1/I/L: the code is read off a screen or a file and typed on a phone
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 12  # 31^12 ≈ 2^59: not guessable, even without the throttle


def normalise_code(text: str) -> str:
    """A setup code as typed (any case, spaces or dashes) → its canonical form."""
    return "".join(ch for ch in text.upper() if ch not in " -\t")


def _format_code(code: str) -> str:
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))


def setup_text(code: str, fingerprint: str | None = None) -> str:
    """The setup code file: the code on the first line (read back by
    ``AdminAuth``), how to use it, and the HTTPS certificate's fingerprint
    so the admin can tell the box's own certificate from a stranger's."""
    text = (f"{_format_code(code)}\n\n"
            "The appliance's admin setup code. Open the appliance's admin page (/admin),\n"
            "enter this code and choose the admin password. The code works once.\n")
    if fingerprint:
        text += ("\nThe admin page is served over HTTPS with the appliance's own certificate.\n"
                 "Your browser warns about it once; go on only if the certificate's SHA-256\n"
                 f"fingerprint it shows is:\n\n{fingerprint}\n")
    return text


def client_key(address: str) -> str:
    """The unit the throttle counts: an IPv4 address, or an IPv6 /64 (one
    host usually owns a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclasses.dataclass
class _Client:
    failures: int = 0
    until: float = 0.0      # no attempt before this (monotonic)
    busy: bool = False      # an attempt is being checked (a slow hash)
    seen: float = 0.0


class Throttle:
    """Failed guesses are slowed down per client and counted per secret.

    Per client (an address, IPv6 a /64): the first ``free`` failures in a
    row cost nothing (a typo); after the n-th (n >= free) a client must wait
    ``base_s * 2**(n-free)`` seconds (at most ``cap_s``) before its next
    attempt; attempts in that window, and attempts while one of its attempts
    is still being checked, are refused at once with the time to wait. A
    success forgets the client; so does ``forget_s`` without failures. At
    most ``max_clients`` are remembered (the least recently seen go first),
    so memory stays bounded.

    Per secret (the PIN, the password, ...), across all clients: at most
    ``budget_per_min`` failed guesses a minute (a burst of ``budget_burst``),
    since addresses are cheap (5,000 rotating ones found a 4-digit PIN in 8 s
    with the per-client limit alone). Each attempt takes a guess from the
    secret's budget before it is checked and a success gives it back; with
    the budget spent, attempts at that secret are refused unchecked until it
    refills (``attacks`` tells the admin page)."""

    def __init__(self, *, free: int = 2, base_s: float = 1.0, cap_s: float = 60.0,
                 forget_s: float = 900.0, max_clients: int = 4096,
                 budget_per_min: float = 30.0, budget_burst: int = 30,
                 clock: Callable[[], float] = time.monotonic):
        self.free, self.base_s, self.cap_s, self.forget_s = free, base_s, cap_s, forget_s
        self.max_clients = max_clients
        self.budget_per_min, self.budget_burst = budget_per_min, budget_burst
        self.clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._budgets: dict[str, tuple[float, float]] = {}     # secret -> (guesses, at)
        self._refused: dict[str, tuple[int, float]] = {}       # secret -> (count, last)

    def __len__(self) -> int:
        return len(self._clients)

    def _budget(self, secret: str, now: float) -> float:
        guesses, at = self._budgets.get(secret, (float(self.budget_burst), now))
        return min(float(self.budget_burst), guesses + (now - at) * self.budget_per_min / 60.0)

    def attacks(self, within_s: float = 300.0) -> dict[str, int]:
        """Secrets whose budget refused guesses lately: how many it refused."""
        now = self.clock()
        return {secret: count for secret, (count, last) in sorted(self._refused.items())
                if now - last < within_s}

    def acquire(self, address: str, secret: str = "credential", *, budget: bool = True) -> float:
        """0.0 if ``address`` may try ``secret`` now (the attempt is then in
        flight until ``release``); otherwise the seconds it must wait.
        ``budget=False``: a try the secret's budget does not count (a
        secret too long to guess, or a browser that proved itself before:
        a budget anyone can spend is also a way to lock everyone out)."""
        now = self.clock()
        guesses = self._budget(secret, now) if budget else float(self.budget_burst)
        if guesses < 1.0:
            count, _ = self._refused.get(secret, (0, now))
            self._refused[secret] = (count + 1, now)
            if count == 0:
                log.warning("guessing at the %s from many addresses: the %s is checked at "
                            "most %g times a minute", secret, secret, self.budget_per_min)
            return (1.0 - guesses) * 60.0 / self.budget_per_min
        key = client_key(address)
        entry = self._clients.get(key)
        if entry is not None and now - entry.seen > self.forget_s and not entry.busy:
            del self._clients[key]
            entry = None
        if entry is None:
            entry = _Client(seen=now)
            self._clients[key] = entry
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(key)
        if entry.busy:
            return max(self.base_s, entry.until - now)
        if now < entry.until:
            return entry.until - now
        entry.busy = True
        entry.seen = now
        if budget:
            self._budgets[secret] = (guesses - 1.0, now)
        return 0.0

    def release(self, address: str, ok: bool, secret: str = "credential", *,
                budget: bool = True) -> None:
        if ok and budget:   # no guess spent
            now = self.clock()
            self._budgets[secret] = (min(float(self.budget_burst),
                                         self._budget(secret, now) + 1.0), now)
        key = client_key(address)
        entry = self._clients.get(key)
        if entry is None:  # evicted meanwhile
            return
        entry.busy = False
        if ok:
            del self._clients[key]
            return
        now = self.clock()
        entry.failures += 1
        entry.seen = now
        # the free ones spent, the next try waits (the third: docs/API.md)
        over = entry.failures - self.free
        if over >= 0:
            entry.until = now + min(self.cap_s, self.base_s * 2 ** min(over, 32))


@dataclasses.dataclass
class AdminSession:
    csrf: str
    expires: float


class Sessions:
    """Logged-in browsers. Ids are 256-bit random; only their SHA-256 is kept
    (no timing leak from the dictionary lookup). Each use extends the session
    by ``idle_s``; at most ``max_sessions`` live at once (the one nearest its
    end goes first)."""

    def __init__(self, *, idle_s: float = 12 * 3600.0, max_sessions: int = 32,
                 clock: Callable[[], float] = time.monotonic):
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._table: dict[bytes, AdminSession] = {}

    def __len__(self) -> int:
        return len(self._table)

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()

    def create(self) -> tuple[str, AdminSession]:
        now = self.clock()
        self._expire(now)
        while len(self._table) >= self.max_sessions:
            oldest = min(self._table, key=lambda k: self._table[k].expires)
            del self._table[oldest]
        session_id = secrets.token_urlsafe(32)
        session = AdminSession(csrf=secrets.token_urlsafe(32), expires=now + self.idle_s)
        self._table[self._key(session_id)] = session
        return session_id, session

    def get(self, session_id: str) -> AdminSession | None:
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        session = self._table.get(key)
        now = self.clock()
        if session is None:
            return None
        if now >= session.expires:
            del self._table[key]
            return None
        session.expires = now + self.idle_s
        return session

    def end(self, session_id: str) -> None:
        self._table.pop(self._key(session_id), None)

    def clear(self) -> None:
        self._table.clear()

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._table.items() if now >= s.expires]:
            del self._table[key]


class AdminAuth:
    """The credentials of one appliance. ``open_setup()`` must run once at
    start (it writes the setup code when one is needed)."""

    def __init__(self, *, state_dir: Path, token: str = "", password_hash: str = "",
                 setup_code_file: str = "", listen_pin: str = "", metrics_token: str = "",
                 clock: Callable[[], float] = time.monotonic):
        self.token = token
        self.listen_pin = listen_pin
        self.metrics_token = metrics_token
        self.password_file = Path(state_dir) / PASSWORD_FILE
        self.code_file = Path(setup_code_file) if setup_code_file else \
            Path(state_dir) / "setup-code.txt"
        self.configured_hash = password_hash
        self.sessions = Sessions(clock=clock)
        self.throttle = Throttle(clock=clock)
        self._hash = password_hash or self._load_saved_hash()
        self._code: str | None = None
        # the HTTPS certificate's SHA-256 fingerprint (set by appliance.cli.serve)
        self.tls_fingerprint: str | None = None
        # proof of the PIN in a cookie; a new key at every start (the page asks again)
        self._pin_key = secrets.token_bytes(32)
        self._device_key = self._load_device_key(Path(state_dir) / DEVICE_KEY_FILE)

    # -- what the guess budget counts ------------------------------------------

    @property
    def token_guessable(self) -> bool:
        return len(self.token) < UNGUESSABLE_TOKEN_CHARS

    @staticmethod
    def guessable(given: str) -> bool:
        """A presented listening secret that spends the PIN's budget: one
        too short to be the venue key (or a PIN as long as a token)."""
        return len(given.strip()) < UNGUESSABLE_TOKEN_CHARS

    @staticmethod
    def _load_device_key(path: Path) -> bytes:
        """Kept across restarts, so a browser stays known; made once."""
        try:
            key = path.read_bytes()
            if len(key) == 32:
                return key
        except OSError:
            pass
        key = secrets.token_bytes(32)
        try:
            atomic_write(path, key)
        except OSError as error:
            log.error("cannot keep the device key in %s (%s): browsers are known until the "
                      "next start only", path, error)
        return key

    def device_proof(self) -> str:
        """The device cookie of a browser that logged in: proof that it did,
        so the password's guess budget, spent by a stranger, never locks it
        out (OWASP's device cookies)."""
        ident = secrets.token_hex(16)
        return f"{ident}.{hmac.new(self._device_key, ident.encode(), hashlib.sha256).hexdigest()}"

    def device_ok(self, given: str) -> bool:
        ident, _, mac = given.partition(".")
        if len(ident) != 32 or not ident.isascii():
            return False
        want = hmac.new(self._device_key, ident.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac.encode("ascii", "replace"), want.encode())

    # -- the admin password ------------------------------------------------

    @property
    def password_set(self) -> bool:
        return bool(self._hash)

    @property
    def setup_open(self) -> bool:
        return self._code is not None and not self.password_set

    def _load_saved_hash(self) -> str:
        try:
            text = self.password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as error:
            log.error("cannot read %s (%s): the admin password must be set again", self.password_file, error)
            return ""
        if not is_password_hash(text):
            log.error("%s does not hold a password hash: the admin password must be set again",
                      self.password_file)
            return ""
        return text

    def open_setup(self) -> str | None:
        """When no password is set: make sure a setup code exists (the one in
        the file if it is well-formed, else a new one), write it and log it.
        Returns the code, or None when a password is set."""
        if self.password_set:
            self._remove_code_file()
            return None
        code = self._read_code_file() or "".join(
            secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        self._code = code
        text = setup_text(code, self.tls_fingerprint)
        try:
            atomic_write(self.code_file, text.encode("ascii"))
        except OSError as error:
            log.error("cannot write the setup code to %s: %s", self.code_file, error)
        log.warning("no admin password is set: the setup code is %s (also in %s)",
                    _format_code(code), self.code_file)
        return code

    def _read_code_file(self) -> str | None:
        try:
            with open(self.code_file, "rb") as f:
                first = f.read(256).decode("ascii").splitlines()
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        code = normalise_code(first[0]) if first else ""
        if len(code) == CODE_LENGTH and all(ch in CODE_ALPHABET for ch in code):
            return code
        return None

    def _remove_code_file(self) -> None:
        try:
            os.unlink(self.code_file)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.error("cannot remove %s (the code no longer works): %s", self.code_file, error)

    def check_setup_code(self, given: str) -> bool:
        if not self.setup_open or self._code is None:
            return False
        return hmac.compare_digest(normalise_code(given).encode("utf-8", "surrogatepass"),
                                   self._code.encode())

    def check_password(self, password: str) -> bool:
        """Slow (scrypt, ~50 ms): run it in a worker thread."""
        stored = self._hash
        return bool(stored) and verify_password(password, stored)

    def check_hash_restorable(self) -> None:
        """A backup's password hash is refused while the config file sets
        the password (its hash would win again at the next start)."""
        if self.configured_hash:
            raise InvalidError("the admin password is set in the config file ([admin] "
                               "password_hash): restore a backup made without it")

    def restore_hash(self, stored: str) -> None:
        """Take a password hash from a backup (``appliance.backup`` checked
        its form)."""
        self.check_hash_restorable()
        atomic_write(self.password_file, (stored + "\n").encode("ascii"))
        self._hash = stored
        self._code = None
        self._remove_code_file()
        log.warning("the admin password was restored from a backup")

    @property
    def password_hash(self) -> str:
        """The hash in force (for a backup that asks for it)."""
        return self._hash

    def set_password(self, password: str) -> None:
        """Hash and persist the first password (slow: a worker thread), then
        invalidate the setup code. The caller has checked the code and holds
        a lock so this happens once."""
        problem = password_problem(password)
        if problem:
            raise ValueError(problem)
        stored = hash_password(password)
        atomic_write(self.password_file, (stored + "\n").encode("ascii"))
        self._hash = stored
        self._code = None
        self._remove_code_file()
        log.warning("the admin password was set with the setup code")

    # -- bearer token and PIN ----------------------------------------------

    def token_ok(self, given: str) -> bool:
        return bool(self.token) and hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), self.token.encode("utf-8", "surrogatepass"))

    def scrape_token_ok(self, given: str) -> bool:
        """The monitoring scrape token (``/metrics`` only)."""
        return bool(self.metrics_token) and hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), self.metrics_token.encode())

    def pin_ok(self, given: str) -> bool:
        return bool(self.listen_pin) and hmac.compare_digest(
            given.strip().encode("utf-8", "surrogatepass"),
            self.listen_pin.encode("utf-8", "surrogatepass"))

    def venue_key(self) -> str:
        """The PIN's long form, for the signs' listen codes (``#key=`` in the
        address): 26 base32 characters (130 bits) made from the PIN with the
        box's own key, so it changes with the PIN and survives restarts.
        Nobody guesses it, so it has no guess budget: while strangers spend
        the PIN's, a listener who scans the sign still gets in at once."""
        if not self.listen_pin:
            return ""
        mac = hmac.new(self._device_key, b"venue key\0" + self.listen_pin.encode(
            "utf-8", "surrogatepass"), hashlib.sha256).digest()
        return base64.b32encode(mac).decode().lower()[:26]

    def listen_secret_ok(self, given: str) -> bool:
        """The PIN, or its long form from a sign."""
        return self.pin_ok(given) or (bool(self.listen_pin) and hmac.compare_digest(
            given.strip().encode("utf-8", "surrogatepass"), self.venue_key().encode()))

    def listen_proof(self) -> str:
        """The listen cookie's value: proves the PIN without holding it."""
        return hmac.new(self._pin_key, self.listen_pin.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()

    def listen_proof_ok(self, given: str) -> bool:
        return bool(self.listen_pin) and hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), self.listen_proof().encode())
