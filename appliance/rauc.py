"""RAUC, the image's update installer, over its D-Bus interface on the
system bus (``de.pengutronix.rauc.Installer``; the address comes from
``DBUS_SYSTEM_BUS_ADDRESS`` when set). RAUC checks the bundle's signature
against its keyring and its compatible string against the system's before
it writes anything; its own reason for a refusal (``LastError``) is what the
caller is told. Progress is RAUC's ``Progress`` property, read while waiting
for its ``Completed`` signal.

jeepney speaks D-Bus in pure Python, on trio. RAUC 1.8 (Debian 13) has no
``InspectBundle``, and its ``Info`` answers a bad signature with only
"rauc info error": ``InstallBundle``'s own checks say more, so there is no
separate look first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import trio
from jeepney import DBusAddress, MatchRule, MessageType, Properties, message_bus, new_method_call
from jeepney.io.trio import DBusRouter, Proxy, open_dbus_router

from .errors import ApplianceError, UnavailableError, UnsupportedError

__all__ = ["Progress", "install_bundle", "booted_slot", "RefusedError"]

INSTALLER = DBusAddress("/", bus_name="de.pengutronix.rauc",
                        interface="de.pengutronix.rauc.Installer")
# how often Progress is read while the install runs
PROGRESS_EVERY_S = 0.2
# the bus or RAUC gone (no socket, the connection closed)
UNREACHABLE = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)
# RAUC unreachable: its service may be starting or restarting (D-Bus activation)
RETRY_AFTER_S = 10
T = TypeVar("T")


class RefusedError(UnsupportedError):
    """RAUC refused or failed the bundle; the message is RAUC's reason."""


@dataclass(frozen=True)
class Progress:
    percent: int
    message: str


async def _call(router: DBusRouter, method: str, signature: str = "",
                body: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    reply = await router.send_and_get_reply(
        new_method_call(INSTALLER, method, signature or None, body))
    if reply.header.message_type == MessageType.error:
        reason = reply.body[0] if reply.body else reply.header.fields
        raise RefusedError(f"RAUC refused the bundle: {reason}")
    return tuple(reply.body)


async def _property(router: DBusRouter, name: str) -> Any:
    reply = await router.send_and_get_reply(Properties(INSTALLER).get(name))
    if reply.header.message_type == MessageType.error:
        raise UnavailableError(f"RAUC's {name} cannot be read: {reply.body}")
    return reply.body[0][1]   # a variant: (signature, value)


async def _on_bus(work: Callable[[DBusRouter], Awaitable[T]]) -> T:
    """``work(router)`` on the system bus. Its errors come out as themselves,
    not inside the exception groups of the router's nursery."""
    refused: ApplianceError | None = None
    try:
        async with open_dbus_router(bus="SYSTEM") as router:
            try:
                return await work(router)
            except ApplianceError as error:
                refused = error
    except BaseExceptionGroup as group:
        lost = group.subgroup(UNREACHABLE)
        if lost is None:
            raise
        raise UnavailableError(f"RAUC cannot be reached over D-Bus: {lost.exceptions[0]}",
                               retry_after_s=RETRY_AFTER_S) from None
    except UNREACHABLE as error:
        raise UnavailableError(f"RAUC cannot be reached over D-Bus: {error}",
                               retry_after_s=RETRY_AFTER_S) from None
    assert refused is not None
    raise refused


async def booted_slot() -> str:
    """The bootname RAUC says the system runs from ("A")."""
    async def work(router: DBusRouter) -> str:
        return str(await _property(router, "BootSlot"))
    return await _on_bus(work)


async def install_bundle(path: str, progress: Callable[[Progress], None]) -> None:
    """Install the bundle at ``path`` (RAUC reads it: a path it can open)
    into the slot not booted; ``progress`` is called as RAUC reports it.
    Returns when RAUC completed it; ``RefusedError`` with RAUC's reason when
    it refused or failed, ``UnavailableError`` when RAUC cannot be reached."""
    completed = MatchRule(type="signal", interface=INSTALLER.interface, member="Completed",
                          path=INSTALLER.object_path)

    async def work(router: DBusRouter) -> None:
        await Proxy(message_bus, router).AddMatch(completed)
        async with router.filter(completed, bufsize=4) as signals:
            operation = await _property(router, "Operation")
            if operation != "idle":
                raise RefusedError(f"RAUC is busy ({operation}): another install runs")
            await _call(router, "InstallBundle", "sa{sv}", (path, {}))
            while True:
                with trio.move_on_after(PROGRESS_EVERY_S):
                    result = (await signals.receive()).body[0]
                    break
                progress(await _progress(router))
            last = await _progress(router)
            progress(last)
            if result != 0:
                reason = await _property(router, "LastError") or last.message
                raise RefusedError(f"RAUC refused the bundle: {reason}")

    await _on_bus(work)


async def _progress(router: DBusRouter) -> Progress:
    percent, message, _depth = await _property(router, "Progress")
    return Progress(int(percent), str(message))
