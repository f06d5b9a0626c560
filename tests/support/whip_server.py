"""Debian's simple-whip-server (Meetecho's WHIP server, a Node program with
Janus's VideoRoom as its backend) for the WHIP-out tests: its own config
(the WHIP API on a free loopback port, Janus's WebSocket transport), an
endpoint created through its /create API.

Debian installs it in /usr/share/simple-whip-server with its node-* modules
in /usr/share/nodejs. Debian's nodejs conflicts with the nodejs the npm
players are built with, so `make test` unpacks the package and its node-*
modules into .venv/debroot instead (packages/test-unpacked.txt); another
directory may be named by SIMPLE_WHIP_SERVER_ROOT.

``read_http_request`` is for the stand-ins beside it: the proxy in front of
it (tests/support/whip_out_check.py) and the WHIP servers of
tests/web/test_publications.py that answer as no good server would."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import httpx
import trio

from .janus import free_tcp_port

APP = Path("usr/share/simple-whip-server")
NODE_MODULES = (Path("usr/share/nodejs"), Path("usr/lib/x86_64-linux-gnu/nodejs"))


# where `make test` unpacks it (packages/test-unpacked.txt)
UNPACKED = Path(__file__).resolve().parents[2] / ".venv" / "debroot"


def root() -> Path | None:
    """Where the package is: SIMPLE_WHIP_SERVER_ROOT, installed (/), or
    unpacked by `make test`."""
    for candidate in (os.environ.get("SIMPLE_WHIP_SERVER_ROOT"), "/", str(UNPACKED)):
        if candidate and (Path(candidate) / APP / "src" / "server.js").is_file():
            return Path(candidate)
    return None


def available() -> bool:
    return root() is not None and shutil.which("node") is not None


class HttpRequest(NamedTuple):
    method: str
    target: str
    headers: dict[str, str]      # names in lower case
    body: bytes


async def read_http_request(stream: trio.abc.ReceiveStream) -> HttpRequest | None:
    """One HTTP/1.1 request off ``stream``: the request line, the headers and
    the body their Content-Length announces; None if the peer closes first."""
    request = b""
    while b"\r\n\r\n" not in request:
        if not (data := await stream.receive_some(65536)):
            return None
        request += data
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        if not (data := await stream.receive_some(65536)):
            return None
        body += data
    return HttpRequest(method, target, headers, body)


class WhipServer:
    def __init__(self, directory: Path, janus_ws_url: str):
        self.directory = directory
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}/whip"
        self.janus_ws_url = janus_ws_url
        self.process: trio.Process | None = None

    async def start(self) -> None:
        base = root()
        assert base is not None, "simple-whip-server is not installed"
        # its server.js reads ./config.js next to itself: a copy with ours
        app = self.directory / "simple-whip-server"
        shutil.copytree(base / APP / "src", app / "src", symlinks=False,
                        ignore=shutil.ignore_patterns("config.js"))
        (app / "src" / "config.js").write_text("module.exports = " + json.dumps({
            "janus": {"address": self.janus_ws_url}, "port": self.port, "rest": "/whip",
            "allowTrickle": True, "strictETags": True, "iceServers": []}) + ";\n")
        env = {**{k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
               "NODE_PATH": ":".join(str(base / m) for m in NODE_MODULES),
               # whip:debug: each request's body (what was POSTed, PATCHed)
               "DEBUG": "whip:*,janus:*,-janus:debug,-janus:vdebug"}
        log = open(self.directory / "whip-server.log", "wb")
        self.process = await trio.lowlevel.open_process(
            ["node", "src/server.js"], cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        async with httpx.AsyncClient(timeout=2) as http:
            with trio.fail_after(20):
                while True:
                    try:
                        if (await http.get(f"{self.url}/healthcheck")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)

    async def create_endpoint(self, endpoint_id: str, room: int, token: str = "",
                              ice_servers: tuple[str, ...] = ()) -> str:
        """A WHIP endpoint publishing into VideoRoom ``room`` (its 201 names
        ``ice_servers``, stun: URIs, in Link headers); its URL."""
        async with httpx.AsyncClient(timeout=5) as http:
            body = {"id": endpoint_id, "room": room, **({"token": token} if token else {}),
                    **({"iceServers": [{"uri": uri} for uri in ice_servers]}
                       if ice_servers else {})}
            r = await http.post(f"{self.url}/create", json=body)
            assert r.status_code == httpx.codes.OK, r.text
        return f"{self.url}/endpoint/{endpoint_id}"

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()

    def log(self, tail: int | None = 4000) -> str:
        """The end of its log (all of it with ``tail=None``)."""
        path = self.directory / "whip-server.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-tail:] if tail else text
