"""sd_notify in pure Python: READY=1, STATUS=..., STOPPING=1 and the watchdog
(WATCHDOG=1) for a ``Type=notify`` unit with ``WatchdogSec=``. Everything is
a no-op when not started by systemd ($NOTIFY_SOCKET unset)."""
from __future__ import annotations

import logging
import os
import socket
from typing import Awaitable, Callable

import trio

__all__ = ["notify", "watchdog_interval", "run_watchdog"]

log = logging.getLogger("appliance.systemd")


def notify(*states: str, env: dict[str, str] | None = None) -> bool:
    """Send ``states`` (e.g. "READY=1", "STATUS=serving") to systemd. Returns
    whether a message was sent."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        except OSError:
            return False
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when
    the watchdog is off or meant for another process."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return usec / 2e6


async def run_watchdog(healthy: Callable[[], bool | Awaitable[bool]] = lambda: True,
                       env: dict[str, str] | None = None) -> None:
    """Ping the watchdog while ``healthy()`` says so; returns at once when
    there is no watchdog. Pings keep a steady pace (half of WatchdogSec);
    ``healthy()`` gets half of that: a check that hangs or raises counts as
    unhealthy, so systemd restarts a process whose check stays bad. A stuck
    trio loop stops the pings by itself."""
    interval = watchdog_interval(env)
    if interval is None:
        return
    was_ok = True
    while True:
        next_ping = trio.current_time() + interval
        ok, error = False, None
        with trio.move_on_after(interval / 2):
            try:
                result = healthy()
                ok = result if isinstance(result, bool) else bool(await result)
            except Exception as exc:
                error = exc
        if ok:
            notify("WATCHDOG=1", env=env)
        if was_ok and not ok:  # logged once per bad spell, not at every check
            log.warning("not healthy: watchdog pings withheld", exc_info=error)
        elif ok and not was_ok:
            log.info("healthy again: watchdog pings resumed")
        was_ok = ok
        await trio.sleep_until(next_ping)
