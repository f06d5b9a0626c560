"""`appliance` as a process: config errors, and `run` under a systemd-like
supervisor: READY=1, a real listener, SIGTERM, clean exit within a deadline."""
from __future__ import annotations

import os
import re
import resource
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


@pytest.mark.parametrize("toml, words", [
    ('state_dir = "{file}"\n', "state_dir"),
    ('state_dir = "{dir}"\nmedia_dir = "{file}"\n', "media_dir"),
    ('[server]\nsession_timeout_s = inf\n', "server.session_timeout_s"),
    ('[server]\nmax_listeners = 9223372036854775807\n', "server.max_listeners"),
    (b'name = "Salle \xe9"\n', "not UTF-8"),
    # every login would fail silently
    ('[admin]\npassword_hash = "hunter2"\n', "admin.password_hash is not a password hash"),
])
def test_bad_configs_are_messages_with_exit_code_2_never_tracebacks(tmp_path, toml, words):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    path = tmp_path / "a.toml"
    if isinstance(toml, bytes):
        path.write_bytes(toml)
    else:
        path.write_text(toml.format(file=a_file, dir=tmp_path / "state"))
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = subprocess.run([*APPLIANCE, *command], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        if command[0] == "check-config" and words in ("state_dir", "media_dir"):
            continue   # folders are made (and judged) only when the appliance runs
        assert result.returncode == 2, (command, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr


@pytest.mark.trio
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_then_stops_cleanly_on_a_signal(tmp_path, signum):
    config = tmp_path / "appliance.toml"
    config.write_text(textwrap.dedent(f'''
        name = "Test box"
        state_dir = "{tmp_path / 'state'}"
        [admin]
        token = "cli-test-token"
        [engine]
        ice_addresses = ["127.0.0.1"]
        lean_port = 0
    '''))
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(tmp_path / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "log", "wb")
    with notify, log:
        process = await trio.lowlevel.open_process(
            [*APPLIANCE, "run", "--config", str(config), "--host", "127.0.0.1", "--port", "0",
             "--https-port", "0"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with trio.fail_after(30):
                ready = (await notify.recv(4096)).decode()
            assert "READY=1" in ready, ready
            url = re.search(r"http://127\.0\.0\.1:\d+", ready).group(0)
            admin = {"Authorization": "Bearer cli-test-token"}
            async with httpx.AsyncClient(base_url=url) as client, \
                    open_aiortc_listener() as peer:
                assert (await client.get("/api/status")).status_code == 401   # no credential
                status = await client.get("/api/status", headers=admin)
                assert status.json()["name"] == "Test box"
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



FD_LIMIT = 128  # the server needs ~20 fds of its own


@pytest.mark.trio
async def test_the_watchdog_stops_while_the_server_cannot_answer(tmp_path):
    """Out of fds, the process and its trio loop still run but nothing is
    accepted or answered (measured in issue 9: the old watchdog kept pinging
    a useless server). The pings stop, so systemd restarts it; here the
    client lets go and they resume."""
    config = tmp_path / "appliance.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                      '[engine]\nice_addresses = ["127.0.0.1"]\nlean_port = 0\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "PYTHONPATH": str(ROOT),
           "WATCHDOG_USEC": "1000000"}  # a check every 0.5 s, each given 0.25 s
    log_path = tmp_path / "log"

    async def logged(text: str) -> None:
        with trio.fail_after(15):
            while text not in log_path.read_text():
                await trio.sleep(0.05)  # a file: nothing to wait on

    held: list[trio.SocketStream] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as drain, \
            open(log_path, "wb") as log:
        drain.bind(str(tmp_path / "notify"))
        drain.setblocking(False)
        notify = trio.socket.from_stdlib_socket(drain.dup())

        async def next_message() -> str:
            with trio.fail_after(30):
                return (await notify.recv(4096)).decode()

        process = await trio.lowlevel.open_process(
            [*APPLIANCE, "run", "--config", str(config), "--host", "127.0.0.1", "--port", "0",
             "--https-port", "0"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT)))
        try:
            ready = await next_message()
            assert "READY=1" in ready, ready
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)", ready).group(1))
            assert await next_message() == "WATCHDOG=1"
            # every fd the server can get, then its listen backlog
            with trio.fail_after(20):
                while True:
                    with trio.move_on_after(1) as connecting:
                        held.append(await trio.open_tcp_stream("127.0.0.1", port))
                    if connecting.cancelled_caught:
                        break
            assert len(held) > FD_LIMIT // 2
            await logged("not healthy: watchdog pings withheld")
            with pytest.raises(BlockingIOError):
                while True:  # pings from checks made before: not the ones we wait for
                    drain.recv(4096)
            with trio.move_on_after(2):  # four checks
                message = await next_message()
                pytest.fail(f"the server could not answer and still sent {message!r}")
            for stream in held:
                await stream.aclose()
            held.clear()
            assert await next_message() == "WATCHDOG=1"
            await logged("healthy again: watchdog pings resumed")
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await process.wait() == 0
        finally:
            notify.close()
            for stream in held:
                await stream.aclose()
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert "connection from" not in log_path.read_text()  # no connection failed


@pytest.mark.parametrize("busy", ["port", "https-port", "lean_port"])
def test_run_with_a_busy_port_is_one_line_and_exit_code_2(tmp_path, busy):
    """A port another program holds (the HTTP one, the HTTPS one, the lean
    transport's UDP one) is a one-line message naming it, never a traceback."""
    kind = socket.SOCK_DGRAM if busy == "lean_port" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1" if kind == socket.SOCK_STREAM else "0.0.0.0", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        port = holder.getsockname()[1]
        lean = port if busy == "lean_port" else 0
        config = tmp_path / "appliance.toml"
        config.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                          f'[engine]\nice_addresses = ["127.0.0.1"]\nlean_port = {lean}\n')
        ports = {"port": "0", "https-port": "0", busy: str(port)}
        result = subprocess.run(
            [*APPLIANCE, "run", "--config", str(config), "--host", "127.0.0.1",
             "--port", ports["port"], "--https-port", ports["https-port"]],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("appliance: ") and str(port) in last, result.stderr
    assert {"port": "server.port", "https-port": "server.https_port",
            "lean_port": "engine.lean_port"}[busy] in last
    assert "in use" in last


def test_check_config_works_without_the_c_build(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('name = "Hall A"\n[[sources]]\nid = "t"\nkind = "tone"\n'
                    '[[sinks]]\nid = "main"\nkind = "opus"\n')
    # the compiled module cannot be imported: as on a machine without the C build
    code = ("import sys; sys.modules['appliance._engine_cffi'] = None; "
            "from appliance.cli import main; sys.exit(main(['check-config', sys.argv[1]]))")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Hall A" in result.stdout


def test_check_config_names_the_secrets_that_are_set_but_never_prints_them(tmp_path):
    secrets = ["admin-token-that-nobody-may-read-1", "metrics-token-that-nobody-may-read",
               "publication-bearer-nobody-may-read", "whip-publish-token-nobody-may-read"]
    path = tmp_path / "a.toml"
    path.write_text(
        f'[admin]\ntoken = "{secrets[0]}"\nmetrics_token = "{secrets[1]}"\n'
        '[[sources]]\nid = "mic"\nkind = "whip"\n'
        f'publish_token = "{secrets[3]}"\n'
        '[[sinks]]\nid = "main"\nkind = "opus"\n'
        '[[publications]]\nid = "out"\nsink_id = "main"\n'
        f'url = "https://example.org/whip"\ntoken = "{secrets[2]}"\n')
    result = subprocess.run([*APPLIANCE, "check-config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not [s for s in secrets if s in result.stdout + result.stderr]
    assert result.stdout.count("'<set>'") == len(secrets)
