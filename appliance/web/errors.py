"""The one table from the appliance's errors to HTTP statuses and headers."""
from __future__ import annotations

from quart import Response
from werkzeug.exceptions import HTTPException

from .. import errors as e
from .common import plain

__all__ = ["STATUS", "error_response", "http_error_response", "HTTP_VERSION_REFUSED",
           "BAD_REQUEST_LINE"]


# Refused below the app, by the server's protocol layer (web/server.py),
# before Quart or this table can see the request.
HTTP_VERSION_REFUSED = 505   # the HTTP/2 preface: the server speaks HTTP/1.1 only
BAD_REQUEST_LINE = 400       # a Host header or request the app is never shown

# Most specific first: the first class the error is an instance of wins.
STATUS: list[tuple[type[e.ApplianceError], int]] = [
    (e.InvalidError, 400),
    (e.UnauthorizedError, 401),
    (e.ForbiddenError, 403),
    (e.NotFoundError, 404),
    (e.ExistsError, 409),
    (e.InUseError, 409),
    (e.ConflictError, 409),
    (e.ManagedElsewhereError, 409),
    (e.StaleError, 412),
    (e.TooLargeError, 413),
    (e.UnsupportedMediaError, 415),
    (e.UnsupportedError, 422),
    (e.RestartRequiredError, 428),
    (e.RateLimitedError, 429),
    (e.AnswerTimeoutError, 500),
    (e.NotSavedError, 500),
    (e.FullError, 503),
    (e.ClosingError, 503),
    (e.UnavailableError, 503),
    (e.ApplianceError, 500),
]


def error_response(error: e.ApplianceError) -> Response:
    status = next(code for cls, code in STATUS if isinstance(error, cls))
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, e.UnauthorizedError):
        headers["WWW-Authenticate"] = f'Bearer realm="{error.realm}"'
        headers["Cache-Control"] = "no-store"
    if isinstance(error, (e.UnauthorizedError, e.ForbiddenError)) and error.needs:
        # which form the appliance's own pages should show (docs/API.md)
        headers["X-Appliance-Auth"] = error.needs
    if isinstance(error, e.ForbiddenError) and error.location:
        headers["Location"] = error.location
        headers["Cache-Control"] = "no-store"
    return plain(error.message, status, headers)


def http_error_response(error: HTTPException, max_body_bytes: int) -> Response:
    """What Quart itself refused (no route, a method, a body past the limit):
    its status, with a reason a person can read."""
    reasons = {413: f"the body is larger than {max_body_bytes} bytes"}
    response = plain(reasons.get(error.code, error.description or error.name),
                     error.code or 500)
    if error.code == 413:
        # the rest of the body is never read: the connection cannot be reused
        response.headers["Connection"] = "close"
    if error.code == 405 and error.response is None:
        allowed = getattr(error, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
    return response
