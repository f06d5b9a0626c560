"""Admin passwords as memory-hard hashes (scrypt, standard library only).

Stored form: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``. Pure stdlib, so
``flash.sh`` and first boot can hash a password without the appliance's
dependencies; the clear password is never written anywhere.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

__all__ = ["hash_password", "verify_password", "is_password_hash", "password_problem",
           "PASSWORD_MIN", "PASSWORD_MAX"]

# The rule for a new admin password, for the admin page and flash.sh alike.
PASSWORD_MIN = 8
PASSWORD_MAX = 256

# 16 MiB of memory per hash (128 * r * n bytes): slow for a guesser, ~50 ms here.
_N, _R, _P = 2 ** 14, 8, 1
_MAXMEM = 64 * 1024 * 1024


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be an admin password, or None if it can."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"the password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long"
    # lone surrogates and control characters cannot be typed reliably and
    # would hash differently depending on the client
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Cn") for ch in password):
        return "the password may not contain control characters or invalid text"
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=_N, r=_R, p=_P,
                            maxmem=_MAXMEM, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def is_password_hash(stored: str) -> bool:
    try:
        _parse(stored)
    except ValueError:
        return False
    return True


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not an scrypt password hash")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("not an scrypt password hash") from None
    # bounded, so a stored hash cannot make verification take minutes or gigabytes
    if not (2 <= n <= 2 ** 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 4
            and 128 * r * n <= _MAXMEM and len(salt) >= 8 and len(digest) >= 16):
        raise ValueError("scrypt parameters out of range")
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; False for a malformed hash."""
    try:
        n, r, p, salt, digest = _parse(stored)
    except ValueError:
        return False
    given = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                           maxmem=_MAXMEM, dklen=len(digest))
    return hmac.compare_digest(given, digest)
