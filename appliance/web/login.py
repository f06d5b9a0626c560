"""The admin page's login: ``/api/admin/session`` (am I logged in, is the
setup code needed), ``/api/admin/login`` (password), ``/api/admin/setup``
(setup code + first password), ``/api/admin/logout``. See docs/API.md,
"Authentication".

These are public endpoints (no credential needed to reach them); the auth
hook still refuses them from another site. Bodies are small JSON objects,
read and checked here so that no value can make them fail with a 500.
"""
from __future__ import annotations

import json
from typing import Any

import trio
from quart import Blueprint, Response, current_app, jsonify, request

from ..admin_auth import AdminAuth
from ..errors import (
    ConflictError, InvalidError, TooLargeError, UnauthorizedError, UnavailableError,
    UnsupportedMediaError,
)
from ..passwords import password_problem
from .auth import (CSRF_HEADER, SESSION_COOKIE, admin_session, http_origin, https_url, public,
                   retry_later)
from .common import client_address, media_type

__all__ = ["blueprint", "read_fields", "set_cookie"]

blueprint = Blueprint("login", __name__, url_prefix="/api/admin")

MAX_BODY = 4096
# a browser that logged in keeps this (not a credential: it only lets its
# password tries past the guess budget that strangers may have spent)
DEVICE_COOKIE = "appliance_device"
DEVICE_COOKIE_S = 400 * 24 * 3600


def _auth() -> AdminAuth:
    return current_app.admin_auth


def _hashing() -> trio.CapacityLimiter:
    """scrypt needs 16 MiB per hash: at most two at once, however many
    addresses are guessing (the throttle counts per address)."""
    limiter = getattr(current_app, "admin_hash_limiter", None)
    if limiter is None:
        limiter = current_app.admin_hash_limiter = trio.CapacityLimiter(2)
    return limiter


async def read_fields(*names: str) -> dict[str, str]:
    """A JSON object with exactly these string fields (else raises)."""
    if media_type() != "application/json":
        raise UnsupportedMediaError("the body must be application/json")
    data = await request.get_data(as_text=False)
    if len(data) > MAX_BODY:
        raise TooLargeError(f"the body is larger than {MAX_BODY} bytes")
    try:
        body: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidError("the body is not a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidError("the body is not a JSON object")
    fields: dict[str, str] = {}
    for name in names:
        value = body.get(name)
        if not isinstance(value, str):
            raise InvalidError(f"{name!r} must be a string")
        fields[name] = value
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise InvalidError(f"unknown field {str(unknown[0])[:40]!r}")
    return fields


def set_cookie(response: Response, name: str, value: str, *, secure: bool = False) -> None:
    """HttpOnly, SameSite=Strict, Path=/; ``secure``: only ever sent back
    over HTTPS (the admin cookie, set over HTTPS). The listen cookie is not
    Secure: listening is served over plain HTTP."""
    response.set_cookie(name, value, path="/", httponly=True, samesite="Strict", secure=secure)


def _logged_in(session_id: str, csrf: str) -> Response:
    response = jsonify({"admin": True, "csrf": csrf})
    # Secure over HTTPS, so a browser never sends it over plain HTTP (where
    # the server would not take it anyway); a loopback client may use http
    secure = request.scheme == "https"
    set_cookie(response, SESSION_COOKIE, session_id, secure=secure)
    if not _auth().device_ok(request.cookies.get(DEVICE_COOKIE, "")):
        response.set_cookie(DEVICE_COOKIE, _auth().device_proof(), max_age=DEVICE_COOKIE_S,
                            path="/api/admin", httponly=True, samesite="Strict", secure=secure)
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/session", methods=["GET"])
@public
async def state() -> Response:
    """What the admin page should show: the app (with its CSRF token), the
    login form, or the first-time setup form."""
    auth = _auth()
    session = admin_session()
    response = jsonify({
        "admin": session is not None,
        "csrf": session.csrf if session is not None else None,
        "password_set": auth.password_set,
        "setup_code_file": None if auth.password_set else auth.code_file.name,
        "csrf_header": CSRF_HEADER,
        # the HTTPS certificate (its SHA-256, as browsers show it) and the
        # admin side's address; where listeners go without TLS
        "tls_fingerprint": getattr(current_app, "tls_fingerprint", None),
        "https_url": https_url("/admin"),
        "listen_origin": http_origin(),
        # the PIN's long form for the share link's code (admin only)
        "venue_key": auth.venue_key() if session is not None else None,
    })
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/login", methods=["POST"])
@public
async def login() -> Response:
    fields = await read_fields("password")
    auth = _auth()
    if not auth.password_set:
        raise ConflictError("no admin password is set yet: use the setup code")
    address = client_address()
    # a browser that logged in before is not held up by a stranger's guessing
    known = auth.device_ok(request.cookies.get(DEVICE_COOKIE, ""))
    wait = auth.throttle.acquire(address, "password", budget=not known)
    if wait:
        raise retry_later(wait, "passwords")
    ok = False
    try:
        # scrypt takes ~50 ms and 16 MiB: off the event loop
        ok = await trio.to_thread.run_sync(auth.check_password, fields["password"],
                                           limiter=_hashing())
    finally:
        auth.throttle.release(address, ok, "password", budget=not known)
    if not ok:
        raise UnauthorizedError("wrong password", realm="appliance")
    session_id, session = auth.sessions.create()
    return _logged_in(session_id, session.csrf)


@blueprint.route("/setup", methods=["POST"])
@public
async def setup() -> Response:
    """The first password, allowed once, with the setup code."""
    fields = await read_fields("code", "password")
    problem = password_problem(fields["password"])
    if problem:
        raise InvalidError(problem)
    auth = _auth()
    async with current_app.admin_setup_lock:  # two right codes at once: one wins
        if auth.password_set:
            raise ConflictError("the admin password is already set: log in")
        address = client_address()
        # 12 characters of 31 (2^59): no guess, and no budget to lock out with
        wait = auth.throttle.acquire(address, "setup code", budget=False)
        if wait:
            raise retry_later(wait, "setup codes")
        ok = auth.check_setup_code(fields["code"])
        auth.throttle.release(address, ok, "setup code", budget=False)
        if not ok:
            raise UnauthorizedError("wrong setup code", realm="appliance")
        try:
            await trio.to_thread.run_sync(auth.set_password, fields["password"],
                                          limiter=_hashing())
        except OSError as error:
            raise UnavailableError(f"the password could not be saved: {error.strerror}") from None
    session_id, session = auth.sessions.create()
    return _logged_in(session_id, session.csrf)


@blueprint.route("/logout", methods=["POST"])
@public
async def logout() -> Response:
    _auth().sessions.end(request.cookies.get(SESSION_COOKIE, ""))
    response = Response("", status=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict",
                           secure=request.scheme == "https")
    return response
