"""A lossy link on loopback: forwards datagrams to a port and drops every
n-th (a Wi-Fi that loses packets), in a real-time process of its own (see
support/realtime.py): run in the test's event loop, a busy machine stalled
it and the box's buffer ran dry."""
from __future__ import annotations

import socket
import sys
from functools import partial

import trio

from .realtime import REPO, run_realtime


async def run_lossy_link(to_port: int, drop_every: int, *,
                         task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Until cancelled; started with the port it listens on (bound before
    the link's process starts, so nothing sent to it is lost to the start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        command = [sys.executable, "-m", "tests.support.lossy_link", str(sock.fileno()),
                   str(to_port), str(drop_every)]
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_realtime, command, cwd=REPO, pass_fds=[sock.fileno()]))
            task_status.started(sock.getsockname()[1])


def forward(fd: int, to_port: int, drop_every: int) -> None:
    with socket.socket(fileno=fd) as sock:
        for n in range(1, sys.maxsize):
            datagram = sock.recv(65536)
            if n % drop_every:
                sock.sendto(datagram, ("127.0.0.1", to_port))


if __name__ == "__main__":   # run_lossy_link's: FD TO_PORT DROP_EVERY
    forward(*map(int, sys.argv[1:]))
