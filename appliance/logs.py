"""The last hour of the appliance's log, for support: what the admin page
downloads (``GET /api/logs``).

On the box the service logs to the journal: ``journalctl`` gives the last
hour of its unit, restarts included (the unit is the one systemd says this
process runs in). Anywhere else (a laptop, the tests) the process keeps the
last hour of its own records in memory (``install``: at most ``MAX_LINES``).
Either way the answer is bounded (``MAX_BYTES``) and never waits long.
"""
from __future__ import annotations

import collections
import logging
import os
import shutil
import time

import trio

__all__ = ["install", "last_hour"]

HOUR_S = 3600.0
MAX_LINES = 20000
MAX_BYTES = 16 << 20
JOURNAL_TIMEOUT_S = 10.0


class _Recent(logging.Handler):
    """The last hour of records, as lines (a bounded deque)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=MAX_LINES)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # the monotonic clock: a wall clock set meanwhile does not move the hour
            self.lines.append((time.monotonic(), self.format(record)))
        except Exception:   # a record that cannot be formatted is not worth a crash
            self.handleError(record)

    def since(self, cutoff: float) -> str:
        return "".join(line + "\n" for created, line in list(self.lines) if created >= cutoff)


_recent: _Recent | None = None


def install() -> None:
    """Keep the last hour of the appliance's records in memory (once per process)."""
    global _recent
    if _recent is None:
        _recent = _Recent()
        logging.getLogger("appliance").addHandler(_recent)


def _unit() -> str | None:
    """The systemd unit this process runs in (None: not under systemd)."""
    if "INVOCATION_ID" not in os.environ:
        return None
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as cgroup:
            for line in cgroup:
                name = line.strip().rsplit("/", 1)[-1]
                if name.endswith(".service"):
                    return name
    except OSError:
        pass
    return None


async def last_hour() -> tuple[str, bytes]:
    """(where it came from: "journal" or "process", the text)."""
    unit = _unit()
    if unit is not None and shutil.which("journalctl"):
        with trio.move_on_after(JOURNAL_TIMEOUT_S):
            done = await trio.run_process(
                ["journalctl", "--unit", unit, "--since", "-1h", "--output", "short-iso",
                 "--no-pager", "--quiet"], capture_stdout=True, capture_stderr=True, check=False)
            if done.returncode == 0:
                return "journal", done.stdout[-MAX_BYTES:]
    install()
    assert _recent is not None
    return "process", _recent.since(time.monotonic() - HOUR_S).encode()[-MAX_BYTES:]
