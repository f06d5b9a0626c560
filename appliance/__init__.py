"""Raspberry Pi listening appliance: line-in to every browser on the LAN.

The engine's names are imported on first use, so the pure parts (config,
model, check-config) work on a machine without the C build."""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "._native": ("EngineError", "ErrorCode"),
    ".engine": ("Engine", "EngineStats", "Listener", "ListenerStats", "SinkStats",
                "live_engine_threads", "open_engine"),
    ".model": ("EngineSettings", "RouteSpec", "SinkSpec", "SourceSpec"),
    ".events": ("AnswerFailed", "AnswerReady", "CandidateGathered", "DeviceLost",
                "DeviceRestored", "Event", "LevelsMeasured", "ListenerState",
                "ListenerStateChanged", "XrunOccurred"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}
__all__ = ["__version__", *_WHERE]  # noqa: PLE0604 (the lazy names, all strings)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'appliance' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value
