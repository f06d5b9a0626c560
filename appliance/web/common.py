"""Helpers the blueprints share."""
from __future__ import annotations

import json
from typing import Any

from quart import Response, current_app, request

from ..service import BadRequestError, Service, ServiceError

__all__ = ["UnsupportedMediaTypeError", "plain", "service", "client_address", "read_body", "read_json", "media_type"]


class UnsupportedMediaTypeError(ServiceError):
    status = 415


def plain(text: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """A text/plain response (error reasons are plain text)."""
    response = Response(text + "\n", status=status, content_type="text/plain; charset=utf-8")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def service() -> Service:
    svc = current_app.service
    if svc is None:
        raise ServiceError("the service is not running")
    return svc


def client_address() -> str:
    """The peer's address (no proxy headers are trusted)."""
    return str(request.remote_addr or "unknown")


def media_type() -> str:
    """The request's media type, lower case, without parameters."""
    return (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()


async def read_body() -> str:
    """The body as UTF-8 text. Quart stops reading past MAX_CONTENT_LENGTH
    (413) instead of buffering everything."""
    data = await request.get_data(as_text=False)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("the body is not UTF-8 text") from None


async def read_json() -> Any:
    if media_type() != "application/json":
        raise UnsupportedMediaTypeError("the body must be application/json")
    try:
        return json.loads(await read_body())
    except json.JSONDecodeError as error:
        raise BadRequestError(f"the body is not JSON: {error}") from None
