"""Scenarios that run in a network namespace of the test's own: a script
under ``unshare -n`` (so it may add links, routes and daemons that vanish
with it) that prints its findings as JSON on its last line of output."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

__all__ = ["can_unshare", "run_scenario", "run_scenario_blocking"]


def can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


def _command(script: Path, args: tuple[str, ...]) -> list[str]:
    return ["unshare", "-n", sys.executable, str(script), *args]


def _result(returncode: int, stdout: bytes, stderr: bytes, tail: int) -> dict[str, Any]:
    assert returncode == 0, stderr.decode(errors="replace")[-tail:]
    return json.loads(stdout.decode().strip().splitlines()[-1])


async def run_scenario(script: Path, *args: str, tail: int = 3000,
                       deliver_cancel: Callable[[trio.Process], Awaitable[None]] | None = None,
                       ) -> dict[str, Any]:
    """The script's findings; its stderr's last ``tail`` characters when it fails."""
    done = await trio.run_process(_command(script, args), capture_stdout=True,
                                  capture_stderr=True, check=False,
                                  deliver_cancel=deliver_cancel)
    return _result(done.returncode, done.stdout, done.stderr, tail)


def run_scenario_blocking(script: Path, *args: str, timeout_s: float,
                          tail: int = 3000) -> dict[str, Any]:
    """``run_scenario`` outside trio (a module-scoped fixture)."""
    done = subprocess.run(_command(script, args), capture_output=True, timeout=timeout_s,
                          check=False)
    return _result(done.returncode, done.stdout, done.stderr, tail)
