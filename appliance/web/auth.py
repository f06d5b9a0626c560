"""Bearer-token check for every ``/api/`` request when a token is configured.

The token comes as ``Authorization: Bearer <token>`` or, for clients that
cannot set headers (``EventSource``, a shared link), as ``?token=<token>``.
CORS preflights (OPTIONS) carry no credentials and are not checked.
"""
from __future__ import annotations

import hmac

from quart import Response, current_app, request

from .common import plain

__all__ = ["require_token", "token_ok"]


def token_ok(expected: str) -> bool:
    given = ""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif "token" in request.args:
        given = request.args.get("token", "")
    return hmac.compare_digest(given.encode(), expected.encode())


async def require_token() -> Response | None:
    expected = current_app.appliance_config.server.token
    if not expected or request.method == "OPTIONS" or not request.path.startswith("/api/"):
        return None
    if token_ok(expected):
        return None
    return plain("a valid bearer token is required", 401,
                 {"WWW-Authenticate": 'Bearer realm="appliance"'})
