"""The box's wall clock: set from the admin's browser when no network time
keeps it (its own hotspot, a venue without NTP), and watched for jumps.

A Pi has no battery-backed clock (a Pi 5 may): without NTP it starts each
boot near the image's build date. systemd-timesyncd keeps it when a network
time server answers (``appliance.board`` reads its sync mark); otherwise
``POST /api/clock`` sets it from the browser's clock.

Nothing in the app measures time with the wall clock: timers, deadlines,
session and throttle expiry, the watchdog and uptime use the monotonic
clock (trio's, ``time.monotonic``), which never jumps. The wall clock only
labels things: log lines, the names of backups and of a damaged state file
set aside, a backup's ``created``; and browsers check the HTTPS
certificate's validity against their own clock, not the box's. So a jump
changes labels only; ``ClockJumps`` says so in the log when it happens, a
backwards jump as a warning (labels after it sort before those before it).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import trio

from .errors import InvalidError, ManagedElsewhereError, UnsupportedError

__all__ = ["WallClock", "ClockJumps", "built_at", "set_system_clock", "NOT_BEFORE_S",
           "MAX_AHEAD_S", "JUMP_S"]

log = logging.getLogger(__name__)

# 2025-01-01 (the image's SOURCE_DATE_EPOCH): no box runs code older than this
NOT_BEFORE_S = 1735689600
# as long as the appliance's own certificate is valid: a clock past that is a typo
MAX_AHEAD_S = 20 * 365 * 86400
# a step smaller than this is drift being corrected, not a jump
JUMP_S = 5.0
WATCH_EVERY_S = 10.0


def built_at() -> float:
    """When this app was built, as far as the box can tell: its package's
    files' time (the image sets them to the build's SOURCE_DATE_EPOCH), and
    never before ``NOT_BEFORE_S``. A clock set before it is wrong."""
    try:
        mtime = Path(__file__).with_name("__init__.py").stat().st_mtime
    except OSError:
        mtime = 0.0
    return max(float(NOT_BEFORE_S), mtime)


def set_system_clock(unix_ns: int) -> None:
    """The real setter: needs CAP_SYS_TIME (appliance.service grants it)."""
    time.clock_settime_ns(time.CLOCK_REALTIME, unix_ns)


def _stamp(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_s))


class ClockJumps:
    """Notices the wall clock jumping: the difference between the wall and
    the monotonic clock is constant while nobody sets the clock."""

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.wall, self.monotonic = wall, monotonic
        self.offset = wall() - monotonic()
        self.backwards = 0   # jumps back seen (status)

    def check(self) -> float:
        """The jump since the last look (0 when under ``JUMP_S``); logged."""
        wall = self.wall()
        offset = wall - self.monotonic()
        jump, self.offset = offset - self.offset, offset
        if jump <= -JUMP_S:
            self.backwards += 1
            log.warning("the wall clock went back %.0f s (from %s to %s): log times and file "
                        "names before and after this do not compare", -jump,
                        _stamp(wall - jump), _stamp(wall))
        elif jump >= JUMP_S:
            log.info("the wall clock went forward %.0f s (from %s to %s)", jump,
                     _stamp(wall - jump), _stamp(wall))
        else:
            return 0.0
        return jump

    async def run(self) -> None:
        """Look every ``WATCH_EVERY_S`` (trio's clock: monotonic) for good."""
        while True:
            await trio.sleep(WATCH_EVERY_S)
            self.check()


class WallClock:
    """Reads and sets the box's clock. The seams (``synchronized``,
    ``setter``, ``wall``) are what tests replace."""

    def __init__(self, synchronized: Callable[[], bool], *,
                 setter: Callable[[int], None] = set_system_clock,
                 wall: Callable[[], float] = time.time, jumps: ClockJumps | None = None) -> None:
        self.synchronized, self.setter, self.wall = synchronized, setter, wall
        self.jumps = jumps if jumps is not None else ClockJumps(wall)

    def status(self) -> dict[str, Any]:
        synchronized = self.synchronized()
        return {"unix_ms": int(self.wall() * 1000), "synchronized": synchronized,
                "settable": not synchronized, "jumped_back": self.jumps.backwards}

    def set(self, body: Any) -> dict[str, Any]:
        """``{"unix_ms": <milliseconds since 1970>}`` from the admin's
        browser: refused while network time keeps the clock, and for a time
        before the app was built or more than ``MAX_AHEAD_S`` after."""
        if not isinstance(body, dict) or set(body) != {"unix_ms"}:
            raise InvalidError('the body must be {"unix_ms": <milliseconds since 1970>}')
        value = body["unix_ms"]
        try:   # an integer too large for a float (JSON allows any) is absurd too
            to_s = float(value) / 1000.0 if not isinstance(value, (bool, str)) else math.nan
        except (TypeError, ValueError, OverflowError):
            to_s = math.nan
        if not math.isfinite(to_s):
            raise InvalidError("unix_ms: must be a number of milliseconds since 1970")
        earliest = built_at()
        if not earliest <= to_s <= earliest + MAX_AHEAD_S:
            raise InvalidError(f"unix_ms: must be between {_stamp(earliest)} (this app's build) "
                               f"and {_stamp(earliest + MAX_AHEAD_S)}")
        if self.synchronized():
            raise ManagedElsewhereError("the clock is kept by network time (systemd-timesyncd): "
                                        "it is not set by hand")
        from_s = self.wall()
        try:
            self.setter(int(value) * 1_000_000)   # whole milliseconds, in nanoseconds
        except PermissionError:
            raise UnsupportedError("this appliance may not set its clock (it needs "
                                   "CAP_SYS_TIME)") from None
        log.warning("clock set from the admin's browser: from %s to %s (%+.0f s)",
                    _stamp(from_s), _stamp(to_s), to_s - from_s)
        self.jumps.offset = self.jumps.wall() - self.jumps.monotonic()  # said here already
        return {"from_unix_ms": int(from_s * 1000), "to_unix_ms": int(value)}
