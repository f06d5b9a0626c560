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

__all__ = ["ffi", "lib", "EngineError", "ErrorCode", "RawEvent", "call", "check",
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


class EngineError(Exception):
    """A call into the engine failed. `code` is an ErrorCode, `message` the
    engine's detail for that call."""

    def __init__(self, code: int, message: str):
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else code
        self.message = message
        super().__init__(f"{message} ({getattr(self.code, 'name', self.code)})")


def text(ptr: Any) -> str | None:
    return None if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", "replace")


def check(rc: int) -> None:
    """Raise EngineError for a negative return code; reads the thread's
    last-error detail right away, before any other engine call."""
    if rc < 0:
        detail = text(lib.ae_last_error()) or text(lib.ae_strerror(rc)) or "engine error"
        raise EngineError(rc, detail)


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
