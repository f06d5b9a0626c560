"""Daemons a test starts for itself, and how each is ended: a private D-Bus
system bus (tests/web/test_update_upload.py's RAUC and
tests/support/venue_avahi_check.py's avahi-daemon claim their names on one),
ended like every other daemon here (``end``)."""
from __future__ import annotations

import subprocess
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Mapping

import trio

__all__ = ["BUS_CONF", "end", "open_system_bus"]

# a system bus on a socket of the test's own, open to everyone: the daemons
# on it run as root here and own their well-known names, as on the box
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


async def end(process: trio.Process) -> None:
    """SIGTERM (avahi-daemon says goodbye), then SIGKILL after 10 s; waited
    for even when cancelled: no daemon outlives the test that started it."""
    process.terminate()
    with trio.CancelScope(shield=True):
        with trio.move_on_after(10) as waited:
            await process.wait()
        if waited.cancelled_caught:
            process.kill()
            await process.wait()


@asynccontextmanager
async def open_system_bus(folder: Path, env: Mapping[str, str] | None = None
                          ) -> AsyncIterator[str]:
    """dbus-daemon with ``BUS_CONF`` (written as ``folder``/bus.conf),
    listening on ``folder``/bus.sock; yields the address it prints once it
    listens (for ``DBUS_SYSTEM_BUS_ADDRESS``), and ends it (``end``). Its
    complaints, if any, go to ``folder``/bus.log."""
    config = folder / "bus.conf"
    config.write_text(BUS_CONF.format(socket=folder / "bus.sock"))
    with open(folder / "bus.log", "wb") as log:
        bus = await trio.lowlevel.open_process(
            ["dbus-daemon", "--nofork", "--print-address=1", f"--config-file={config}"],
            stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        assert bus.stdout is not None
        printed = b""
        with trio.fail_after(10):   # it prints its address once it listens
            while not printed.endswith(b"\n"):
                chunk = await bus.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"dbus-daemon ended before it listened: {folder}/bus.log")
                printed += chunk
        await bus.stdout.aclose()   # it says nothing more
        yield printed.decode().strip()
    finally:
        await end(bus)
