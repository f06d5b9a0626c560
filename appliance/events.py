"""Events the engine posts, as small frozen values named in the past tense.

Listener events carry the engine's listener id (an int that is never reused);
device, xrun and level events name the source or sink by its id.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

EntityKind = Literal["source", "sink"]


class ListenerState(enum.Enum):
    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    COMPLETED = "completed"
    FAILED = "failed"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"

    @property
    def is_live(self) -> bool:
        return self in (ListenerState.CONNECTED, ListenerState.COMPLETED)

    @property
    def is_final(self) -> bool:
        return self in (ListenerState.FAILED, ListenerState.CLOSED)


@dataclass(frozen=True, slots=True)
class AnswerReady:
    listener_id: int
    sdp: str


@dataclass(frozen=True, slots=True)
class OfferReady:
    """A publication's offer (WHIP out), with every candidate."""
    listener_id: int
    sdp: str


@dataclass(frozen=True, slots=True)
class AnswerFailed:
    listener_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CandidateGathered:
    listener_id: int
    mline_index: int
    candidate: str


@dataclass(frozen=True, slots=True)
class ListenerStateChanged:
    listener_id: int
    state: ListenerState


@dataclass(frozen=True, slots=True)
class DeviceLost:
    kind: EntityKind
    entity_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class DeviceRestored:
    kind: EntityKind
    entity_id: str


@dataclass(frozen=True, slots=True)
class XrunOccurred:
    kind: EntityKind
    entity_id: str
    total: int


@dataclass(frozen=True, slots=True)
class LevelsMeasured:
    """Peak and RMS of the audio added between ``since`` and ``measured_at``
    (monotonic seconds, the clock of ``time.monotonic``): a change made at
    time t shows in the events whose ``since`` is after t."""
    kind: EntityKind
    entity_id: str
    peak_dbfs: tuple[float, ...]
    rms_dbfs: tuple[float, ...]
    since: float = 0.0
    measured_at: float = 0.0


ListenerEvent = (AnswerReady | OfferReady | AnswerFailed | CandidateGathered |
                 ListenerStateChanged)
Event = ListenerEvent | DeviceLost | DeviceRestored | XrunOccurred | LevelsMeasured

# Events that may be coalesced or dropped when the consumer falls behind; every
# other event is delivered, in order.
DROPPABLE_EVENTS = (LevelsMeasured,)
