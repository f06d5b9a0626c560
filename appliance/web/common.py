"""Helpers the blueprints share."""
from __future__ import annotations

import json
from typing import Any

from quart import Response, current_app, request

from ..errors import ClosingError, InvalidError, UnsupportedMediaError
from ..service import Service

__all__ = ["plain", "service", "client_address", "read_body", "read_json", "read_object",
           "media_type"]


def plain(text: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """A text/plain response (error reasons are plain text)."""
    response = Response(text + "\n", status=status, content_type="text/plain; charset=utf-8")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def service() -> Service:
    svc = current_app.service
    if svc is None:
        raise ClosingError("the service is not running", retry_after_s=10)
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
        raise InvalidError("the body is not UTF-8 text") from None


async def read_json() -> Any:
    if media_type() != "application/json":
        raise UnsupportedMediaError("the body must be application/json")
    try:
        return json.loads(await read_body())
    # ValueError: also numbers past Python's digit limit; RecursionError: deep nesting
    except (ValueError, RecursionError) as error:
        raise InvalidError(f"the body is not JSON: {str(error)[:200]}") from None


async def read_object() -> dict[str, Any]:
    body = await read_json()
    if not isinstance(body, dict):
        raise InvalidError("the body must be a JSON object")
    return body
