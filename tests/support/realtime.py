"""Test peers that keep time for the box (a sender, a lossy link) run in
processes of their own, at real-time priority where the tests may ask for it
(root). In a test's own event loop, or at normal priority beside a QEMU boot,
a busy machine held them up, and the box heard their stall as a gap."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import trio

from appliance.config import APP_REALTIME_PRIORITY

PRIORITY = APP_REALTIME_PRIORITY - 10   # below the engine's: the box under test comes first
# a peer's process runs its module as ``python -m tests.support.NAME`` from here
REPO = Path(__file__).resolve().parents[2]


def become_realtime() -> None:
    """This process (and the threads it starts) at PRIORITY, where allowed."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIORITY))
    except PermissionError:
        pass


# ``await nursery.start(run_realtime, command)``: the Process, killed when cancelled
run_realtime = partial(trio.run_process, check=False, preexec_fn=become_realtime)
