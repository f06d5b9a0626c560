"""The errors the appliance's layers raise, named for the state a caller
branches on. None of them knows about HTTP: the one table that maps them to
statuses and headers is ``appliance.web.errors``."""
from __future__ import annotations

__all__ = ["ApplianceError", "InvalidError", "NotFoundError", "ExistsError", "InUseError",
           "FullError", "RateLimitedError", "AnswerTimeoutError", "RestartRequiredError",
           "StaleError", "UnsupportedError", "UnsupportedMediaError", "NotSavedError", "ClosingError",
           "UnauthorizedError", "ForbiddenError", "TooLargeError", "ConflictError",
           "UnavailableError", "ManagedElsewhereError"]


class ApplianceError(Exception):
    """Base class. ``message`` is plain text meant for the caller;
    ``retry_after_s`` says when trying again makes sense, where that is known."""

    def __init__(self, message: str, *, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidError(ApplianceError, ValueError):
    """The input is malformed or a value is out of range; the message names
    the field or the problem."""


class UnsupportedMediaError(ApplianceError):
    """The body is not of a media type the endpoint takes."""


class UnauthorizedError(ApplianceError):
    """A credential is missing or wrong; ``realm`` names the one that would do,
    and ``needs`` tells the appliance's own pages which form to show ("pin",
    "admin"), where that is what they should ask for."""

    def __init__(self, message: str, *, realm: str, needs: str | None = None):
        super().__init__(message)
        self.realm = realm
        self.needs = needs


class ForbiddenError(ApplianceError):
    """The request is refused whoever asks this way: ``needs`` says what would
    do ("admin", "https"), ``location`` where to go instead (the HTTPS
    address), where known."""

    def __init__(self, message: str, *, needs: str | None = None,
                 location: str | None = None):
        super().__init__(message)
        self.needs = needs
        self.location = location


class TooLargeError(ApplianceError):
    """The body is larger than the endpoint takes."""


class ConflictError(ApplianceError):
    """The request does not fit the appliance's state now (a password that
    is set already, or not yet)."""


class NotFoundError(ApplianceError):
    """No such entity, session or resource."""


class ExistsError(ApplianceError):
    """An entity with that id exists already."""


class InUseError(ApplianceError):
    """The entity is still used (by routes or listeners)."""


class FullError(ApplianceError):
    """A cap is reached (listeners); try again later."""


class ClosingError(ApplianceError):
    """The appliance is shutting down."""


class RateLimitedError(ApplianceError):
    """Too many requests from one client."""


class AnswerTimeoutError(ApplianceError):
    """The engine did not answer an offer in time."""


class ManagedElsewhereError(ApplianceError):
    """Something else keeps this value (network time keeps the clock, the
    config file its own relays): it is not changed by hand."""


class RestartRequiredError(ApplianceError):
    """An ICE restart was asked for without naming the session's version (If-Match)."""


class StaleError(ApplianceError):
    """The caller's version of the session (If-Match) is not the current one."""


class UnsupportedError(ApplianceError):
    """A well-formed request this appliance does not implement (ICE restart)."""


class NotSavedError(ApplianceError):
    """The change is live but could not be persisted."""


class UnavailableError(ApplianceError):
    """The box cannot do it now for a reason of its own (a disk that refuses
    a write); trying later may work."""
