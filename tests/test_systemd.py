"""sd_notify over a real datagram socket, as systemd receives it."""
from __future__ import annotations

import os
import socket

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
