"""The one table from the appliance's errors to HTTP statuses and headers."""
from __future__ import annotations

from quart import Response

from .. import errors as e
from .common import plain

__all__ = ["STATUS", "error_response"]


# Most specific first: the first class the error is an instance of wins.
STATUS: list[tuple[type[e.ApplianceError], int]] = [
    (e.InvalidError, 400),
    (e.UnauthorizedError, 401),
    (e.NotFoundError, 404),
    (e.ExistsError, 409),
    (e.InUseError, 409),
    (e.ManagedElsewhereError, 409),
    (e.StaleError, 412),
    (e.UnsupportedMediaError, 415),
    (e.UnsupportedError, 422),
    (e.RestartRequiredError, 428),
    (e.RateLimitedError, 429),
    (e.AnswerTimeoutError, 500),
    (e.NotSavedError, 500),
    (e.FullError, 503),
    (e.ClosingError, 503),
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
    return plain(error.message, status, headers)
