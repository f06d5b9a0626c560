"""sd_notify over a real datagram socket, as systemd receives it."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest
import trio

from appliance import systemd


def test_notify_sends_states_to_the_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert systemd.notify("READY=1", "STATUS=serving", env={"NOTIFY_SOCKET": path})
        assert server.recv(4096) == b"READY=1\nSTATUS=serving"
    assert not systemd.notify("READY=1", env={})
    assert not systemd.notify("READY=1", env={"NOTIFY_SOCKET": path})  # nobody listens


def test_notify_to_an_abstract_socket():
    name = f"appliance-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert systemd.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        assert server.recv(4096) == b"WATCHDOG=1"


def test_watchdog_interval():
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000",
                                      "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "x"}) is None


@pytest.mark.trio
async def test_the_watchdog_pings_while_healthy(tmp_path):
    path = str(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.setblocking(False)
        sock = trio.socket.from_stdlib_socket(server.dup())
        with sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(systemd.run_watchdog, lambda: True, env)
                for _ in range(3):
                    with trio.fail_after(5):
                        assert await sock.recv(100) == b"WATCHDOG=1"
                nursery.cancel_scope.cancel()
    await systemd.run_watchdog(env={})  # no watchdog: returns at once


@pytest.mark.trio
async def test_the_watchdog_withholds_pings_while_the_check_fails_hangs_or_raises(tmp_path, caplog):
    """A check that says no, never returns, or raises is not healthy: no
    ping. Every call of the check means the previous decision is made."""
    caplog.set_level(logging.INFO, "appliance.systemd")
    path = str(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}  # a check every 0.1 s
    mode = "no"
    calls = 0
    called = trio.Event()

    async def check() -> bool:
        nonlocal calls, called
        calls += 1
        called.set()
        called = trio.Event()
        if mode == "hang":
            await trio.sleep_forever()
        if mode == "raise":
            raise OSError("no fd left")
        return mode == "ok"

    async def calls_after(n: int) -> None:
        target = calls + n
        with trio.fail_after(10):
            while calls < target:
                await called.wait()

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.setblocking(False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(systemd.run_watchdog, check, env)
            for mode in ("no", "hang", "raise"):  # noqa: B007 (check() reads it)
                await calls_after(3)
                with pytest.raises(BlockingIOError):
                    server.recv(100)  # not a single ping
            mode = "ok"
            sock = trio.socket.from_stdlib_socket(server.dup())
            with sock, trio.fail_after(10):
                assert await sock.recv(100) == b"WATCHDOG=1"
            nursery.cancel_scope.cancel()
    assert "not healthy: watchdog pings withheld" in caplog.text
    assert "healthy again" in caplog.text


def test_the_unit_gives_room_for_connections_and_a_watchdog():
    unit = (Path(__file__).resolve().parent.parent
            / "image/files/common/etc/systemd/system/appliance.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines()
                    if "=" in line and not line.startswith("#"))
    assert int(settings["LimitNOFILE"]) >= 65536  # up to 1000 listeners, their connections
    assert settings["Type"] == "notify" and int(settings["WatchdogSec"]) > 0
