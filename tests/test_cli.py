"""`appliance` as a process: config errors, and `run` under a systemd-like
supervisor: READY=1, a real listener, SIGTERM, clean exit within a deadline."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import trio

from tests.support.webrtc import dominant_frequency, open_aiortc_listener

APPLIANCE = [sys.executable, "-m", "appliance.cli"]
ROOT = Path(__file__).resolve().parent.parent


def test_check_config_names_an_unknown_key(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("[server]\nprot = 80\n")
    result = subprocess.run([*APPLIANCE, "check-config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown key 'server.prot'" in result.stderr
    result = subprocess.run([*APPLIANCE, "run", "--config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "server.prot" in result.stderr
    result = subprocess.run([*APPLIANCE, "version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "0.1.0"


@pytest.mark.trio
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_then_stops_cleanly_on_a_signal(tmp_path, signum):
    config = tmp_path / "appliance.toml"
    config.write_text(textwrap.dedent(f'''
        name = "Test box"
        state_dir = "{tmp_path / 'state'}"
        [engine]
        ice_addresses = ["127.0.0.1"]
    '''))
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(tmp_path / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "log", "wb")
    with notify, log:
        process = await trio.lowlevel.open_process(
            [*APPLIANCE, "run", "--config", str(config), "--host", "127.0.0.1", "--port", "0"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with trio.fail_after(30):
                ready = (await notify.recv(4096)).decode()
            assert "READY=1" in ready, ready
            url = re.search(r"http://127\.0\.0\.1:\d+", ready).group(0)
            async with httpx.AsyncClient(base_url=url) as client, \
                    open_aiortc_listener() as peer:
                assert (await client.get("/api/status")).json()["name"] == "Test box"
                r = await client.post("/api/whep/main", content=await peer.create_offer(),
                                      headers={"Content-Type": "application/sdp"})
                assert r.status_code == 201, r.text
                await peer.accept_answer(r.text)
                await peer.wait_connected()
                assert abs(dominant_frequency(await peer.record(0.3)) - 440) < 2
                process.send_signal(signum)
                with trio.fail_after(20):
                    stopping = (await notify.recv(4096)).decode()
                    assert stopping == "STOPPING=1"
                    code = await process.wait()
            assert code == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    text = (tmp_path / "log").read_text()
    assert re.search(r"session \S+ on main ended: shutdown", text), text
    assert "stopped" in text and "Traceback" not in text, text
