"""Raspberry Pi listening appliance: line-in to every browser on the LAN."""
from ._native import EngineError, ErrorCode
from .engine import (
    Engine, EngineSettings, EngineStats, ListenerStats, RouteSpec, SinkSpec, SinkStats,
    SourceSpec, live_engine_threads, open_engine,
)
from .events import (
    AnswerFailed, AnswerReady, CandidateGathered, DeviceLost, DeviceRestored, Event,
    LevelsMeasured, ListenerState, ListenerStateChanged, XrunOccurred,
)

__version__ = "0.1.0"
