"""The only importer of the compiled cffi module: turns return codes into
EngineError and owns the C-to-Python event callback."""
from __future__ import annotations

import enum
from typing import Any, Callable

import os

# GLib's slice allocator (bookworm's GLib 2.74) keeps freed blocks in
# per-thread magazines for good: with hundreds of listener threads, memory
# would stay at the high-water mark after listeners leave. Plain malloc
# returns it. Set before GLib first allocates, i.e. before any engine exists.
os.environ.setdefault("G_SLICE", "always-malloc")

from ._engine_cffi import ffi, lib  # noqa: E402
from .errors import (  # noqa: E402
    ApplianceError, ClosingError, ExistsError, FullError, InUseError, InvalidError,
    NotFoundError,
)

__all__ = ["ffi", "lib", "EngineError", "engine_error", "ErrorCode", "RawEvent", "call", "check",
           "set_event_sink", "text"]


class ErrorCode(enum.IntEnum):
    INVALID = lib.AE_ERR_INVALID
    NOMEM = lib.AE_ERR_NOMEM
    DEVICE = lib.AE_ERR_DEVICE
    SDP = lib.AE_ERR_SDP
    BUSY = lib.AE_ERR_BUSY
    LIMIT = lib.AE_ERR_LIMIT
    TIMEOUT = lib.AE_ERR_TIMEOUT
    CODEC = lib.AE_ERR_CODEC
    MEDIA = lib.AE_ERR_MEDIA
    FILE = lib.AE_ERR_FILE
    CLOSED = lib.AE_ERR_CLOSED
    NETWORK = lib.AE_ERR_NETWORK
    # raised by the Python face, never by C
    NOT_FOUND = -100
    EXISTS = -101


class EngineError(ApplianceError):
    """A call into the engine failed. `code` is an ErrorCode, `message` the
    engine's detail for that call. What is raised is always one of the
    subclasses below, which are also the appliance's error for that state
    (`engine_error`), so no caller has to translate it."""

    def __init__(self, code: int, message: str, *, retry_after_s: int | None = None):
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else code
        super().__init__(message, retry_after_s=retry_after_s)

    def __str__(self) -> str:
        return f"{self.message} ({getattr(self.code, 'name', self.code)})"


class EngineNotFoundError(EngineError, NotFoundError):
    pass


class EngineExistsError(EngineError, ExistsError):
    pass


class EngineInUseError(EngineError, InUseError):
    pass


class EngineInvalidError(EngineError, InvalidError):
    pass


class EngineFullError(EngineError, FullError):
    pass


class EngineClosingError(EngineError, ClosingError):
    pass


class EngineFailedError(EngineError):
    """Anything else (out of memory, an internal failure): a 500."""


_ERROR_CLASS: dict[int, type[EngineError]] = {
    ErrorCode.NOT_FOUND: EngineNotFoundError,
    ErrorCode.EXISTS: EngineExistsError,
    ErrorCode.BUSY: EngineInUseError,
    **dict.fromkeys((ErrorCode.INVALID, ErrorCode.SDP, ErrorCode.CODEC, ErrorCode.FILE,
                     ErrorCode.DEVICE, ErrorCode.NETWORK), EngineInvalidError),
    ErrorCode.LIMIT: EngineFullError,
    ErrorCode.CLOSED: EngineClosingError,
}
# Full and closing are passing states: worth trying again after a while.
_RETRY_AFTER_S = {EngineFullError: 10, EngineClosingError: 10}


def engine_error(code: int, message: str) -> EngineError:
    """The engine's refusal, as the error a caller of the service branches on."""
    cls = _ERROR_CLASS.get(code, EngineFailedError)
    return cls(code, message, retry_after_s=_RETRY_AFTER_S.get(cls))


def text(ptr: Any) -> str | None:
    return None if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", "replace")


def check(rc: int) -> None:
    """Raise EngineError for a negative return code; reads the thread's
    last-error detail right away, before any other engine call."""
    if rc < 0:
        detail = text(lib.ae_last_error()) or text(lib.ae_strerror(rc)) or "engine error"
        raise engine_error(rc, detail)


def call(fn: Callable[..., int], *args: Any) -> int:
    """Call an engine function and check it in the same thread: the error
    detail is per thread, so a call made in a worker thread must be checked
    there too."""
    rc = fn(*args)
    check(rc)
    return rc


class RawEvent:
    """An engine event copied out of C memory (its payload dies when the
    callback returns): the ``ae_event`` struct, owned by Python, and its text."""
    __slots__ = ("struct", "text")

    def __init__(self, event: Any):
        self.struct = ffi.new("ae_event *", event[0])
        self.text = text(event.text)
        self.struct.text = ffi.NULL


_EventSink = Callable[[RawEvent], None]


@ffi.def_extern(onerror=lambda *exc: None)
def ae_python_event_cb(user: Any, event: Any) -> None:
    # Runs on the engine's event thread. Never raises into C (onerror).
    sink: _EventSink = ffi.from_handle(user)
    sink(RawEvent(event))


def set_event_sink(sink: _EventSink) -> Any:
    """A handle to pass as the callback's `user`; keep it alive until the
    engine is destroyed."""
    return ffi.new_handle(sink)
