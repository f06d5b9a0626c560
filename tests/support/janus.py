"""A real Janus (Debian's) for the relay tests: started on loopback with a
config directory of its own (the HTTP transport and the streaming plugin
only), stopped and started again on the same port to play a relay that
restarts; and a WebRTC listener that watches a streaming mountpoint through
Janus's HTTP API, the way a browser on the relay would."""
from __future__ import annotations

import itertools
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import trio

JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
PLUGINS_OFF = ("audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "sip",
               "textroom", "videocall", "videoroom", "voicemail")
TRANSPORTS_OFF = ("mqtt", "nanomsg", "pfunix", "rabbitmq", "websockets")
EVENTS_OFF = ("gelfevh", "mqttevh", "nanomsgevh", "rabbitmqevh", "sampleevh", "wsevh")


def available() -> bool:
    return shutil.which("janus") is not None and (JANUS_LIB / "plugins").is_dir()


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


VIDEOROOM = 1234   # the one room a VideoRoom Janus has (a WHIP ingest's backend)


def write_config(conf: Path, http_port: int, *, api_secret: str = "", admin_key: str = "",
                 ice: str = "127.0.0.1", ws_port: int = 0, public_address: str = "",
                 lite: bool = False, session_timeout_s: int = 60, debug_level: int = 4,
                 mountpoints: str = "") -> Path:
    """``ws_port``: the VideoRoom plugin on (room VIDEOROOM, Opus audio)
    and the WebSocket transport on that port, as simple-whip-server
    talks to Janus; ``public_address``: the address its candidates name
    instead of its own (nat_1_1_mapping). ``lite``: ICE-lite;
    ``mountpoints``: the streaming plugin's static ones, in its config's
    syntax (the benchmarks')."""
    conf.mkdir(parents=True, exist_ok=True)
    plugins_off = tuple(n for n in PLUGINS_OFF if not (ws_port and n == "videoroom"))
    transports_off = tuple(n for n in TRANSPORTS_OFF if not (ws_port and n == "websockets"))

    def off(prefix: str, names: tuple[str, ...]) -> str:
        return ",".join(f"libjanus_{n}.so" for n in names)

    secret = f'api_secret = "{api_secret}"' if api_secret else ""
    (conf / "janus.jcfg").write_text(f"""general: {{
  configs_folder = "{conf}"
  plugins_folder = "{JANUS_LIB}/plugins"
  transports_folder = "{JANUS_LIB}/transports"
  events_folder = "{JANUS_LIB}/events"
  loggers_folder = "{JANUS_LIB}/loggers"
  debug_level = {debug_level}
  session_timeout = {session_timeout_s}
  {secret}
}}
certificates: {{}}
media: {{ rtp_port_range = "20000-40000" }}
nat: {{ ice_lite = {"true" if lite else "false"}, ice_enforce_list = "{ice}" {f'nat_1_1_mapping = "{public_address}"' if public_address else ""} }}
plugins: {{ disable = "{off('', plugins_off)}" }}
transports: {{ disable = "{off('', transports_off)}" }}
loggers: {{ disable = "libjanus_jsonlog.so" }}
events: {{ broadcast = false, disable = "{off('', EVENTS_OFF)}" }}
""")
    (conf / "janus.transport.http.jcfg").write_text(
        f'general: {{ json = "plain", base_path = "/janus", http = true, port = {http_port}, '
        f'ip = "127.0.0.1", https = false }}\nadmin: {{ admin_http = false }}\n')
    key = f', admin_key = "{admin_key}"' if admin_key else ""
    (conf / "janus.plugin.streaming.jcfg").write_text(
        f"general: {{ events = false{key} }}\n{mountpoints}")
    if ws_port:
        (conf / "janus.transport.websockets.jcfg").write_text(
            f'general: {{ json = "plain", ws = true, ws_port = {ws_port}, ws_ip = "127.0.0.1", '
            f'wss = false }}\nadmin: {{ admin_ws = false }}\n')
        (conf / "janus.plugin.videoroom.jcfg").write_text(
            f'general: {{ }}\nroom-{VIDEOROOM}: {{ description = "whip" publishers = 4 '
            f'audiocodec = "opus" videocodec = "vp8" }}\n')
    return conf / "janus.jcfg"


class Janus:
    """One Janus process; ``start`` and ``stop`` may be called again (the
    same port, the same config: a relay that restarts)."""

    def __init__(self, directory: Path, *, api_secret: str = "", admin_key: str = "",
                 ice: str = "127.0.0.1", videoroom: bool = False, public_address: str = ""):
        """``ice``: the interface or address Janus gathers ICE candidates on
        (it gathers none on loopback: a listener's test runs in a network
        namespace with an interface of its own, tests/support/janus_check.py);
        ``videoroom``: the VideoRoom plugin and the WebSocket transport
        (``ws_url``) on as well; ``public_address``: see write_config."""
        self.directory = directory
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}/janus"
        ws_port = free_tcp_port() if videoroom else 0
        self.ws_url = f"ws://127.0.0.1:{ws_port}" if videoroom else ""
        self.config = write_config(directory / "conf", self.port, api_secret=api_secret,
                                   admin_key=admin_key, ice=ice, ws_port=ws_port,
                                   public_address=public_address)
        self.api_secret = api_secret
        self.process: trio.Process | None = None
        self._runs = itertools.count()

    async def start(self) -> None:
        log = open(self.directory / f"janus-{next(self._runs)}.log", "wb")
        self.process = await trio.lowlevel.open_process(
            ["janus", "-C", str(self.config), "-F", str(self.config.parent)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        async with httpx.AsyncClient(timeout=2) as http:
            with trio.fail_after(20):
                while True:
                    try:
                        if (await http.get(f"{self.url}/info")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await process.wait()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:]
                         for p in sorted(self.directory.glob("janus-*.log")))


class JanusClient:
    """The HTTP API as a listener's page would use it: a session, a handle
    on the streaming plugin, long polls for the plugin's events."""

    def __init__(self, url: str, api_secret: str = ""):
        self.url = url
        self.api_secret = api_secret
        self.http = httpx.AsyncClient(timeout=10)
        self._tx = itertools.count()
        self.session: int | None = None
        self.handle: int | None = None

    async def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": f"t{next(self._tx)}"}
        if self.api_secret:
            body["apisecret"] = self.api_secret
        reply = (await self.http.post(path, json=body)).json()
        if reply.get("janus") not in ("success", "ack"):
            raise AssertionError(f"janus: {reply}")
        return reply

    async def attach_streaming(self) -> None:
        await self.attach("janus.plugin.streaming")

    async def attach(self, plugin: str) -> None:
        self.session = (await self.request(self.url, {"janus": "create"}))["data"]["id"]
        reply = await self.request(f"{self.url}/{self.session}",
                                   {"janus": "attach", "plugin": plugin})
        self.handle = reply["data"]["id"]

    async def message(self, body: dict[str, Any], jsep: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
        """A synchronous plugin request (list, info): its plugindata.data."""
        payload: dict[str, Any] = {"janus": "message", "body": body}
        if jsep:
            payload["jsep"] = jsep
        reply = await self.request(f"{self.url}/{self.session}/{self.handle}", payload)
        return reply.get("plugindata", {}).get("data", {})

    async def next_event(self, want: str = "jsep", timeout: float = 10) -> dict[str, Any]:
        """The next event from the long poll that carries ``want``."""
        with trio.fail_after(timeout):
            while True:
                params = {"maxev": 1}
                if self.api_secret:
                    params["apisecret"] = self.api_secret
                r = await self.http.get(f"{self.url}/{self.session}", params=params, timeout=40)
                events = r.json()
                for event in events if isinstance(events, list) else [events]:
                    if want in event:
                        return event

    async def aclose(self) -> None:
        await self.http.aclose()


STALL_S = 1.0     # no packet this long: the path is gone (the listen page's rule)


class RelayAwareListener:
    """An aiortc listener that follows the listen page's protocol: it asks
    the box where to listen (``GET /api/listen/where/<channel>``), plays the
    box over WHEP or a Janus relay's mountpoint through Janus's API, and when
    packets stop for ``STALL_S`` asks again, leaving out the relay it lost.
    ``where`` says where it plays now (``"box"`` or the relay's id)."""

    def __init__(self, box: httpx.AsyncClient, sink_id: str, open_peer: Any):
        self.box = box
        self.sink_id = sink_id
        self.open_peer = open_peer        # open_aiortc_listener
        self.peer: Any = None
        self.where: str | None = None
        self.switched = trio.Event()      # set (and made anew) at every new path
        self._janus: JanusClient | None = None
        self._session_url: str | None = None

    async def _play_box(self) -> None:
        offer = await self.peer.create_offer()
        r = await self.box.post(f"/api/whep/{self.sink_id}", content=offer,
                                headers={"Content-Type": "application/sdp"})
        if r.status_code != 201:
            raise AssertionError(f"the box answered {r.status_code}: {r.text}")
        self._session_url = r.headers["Location"]
        await self.peer.accept_answer(r.text)
        self.where = "box"

    async def _play_janus(self, janus: dict[str, Any]) -> None:
        client = self._janus = JanusClient(janus["url"])
        await client.attach_streaming()
        await client.message({"request": "watch", "id": janus["mountpoint"]})
        offer = (await client.next_event("jsep"))["jsep"]["sdp"]
        answer = await self.peer.answer_offer(offer)
        await client.message({"request": "start"}, {"type": "answer", "sdp": answer})
        self.where = janus["relay"]

    async def _leave(self) -> None:
        if self._janus is not None:
            await self._janus.aclose()
            self._janus = None
        if self._session_url is not None:
            await self.box.delete(self._session_url)
            self._session_url = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; started once the first path plays."""
        avoid: str | None = None
        started = False
        while True:
            params = {"avoid": avoid} if avoid else {}
            found = (await self.box.get(f"/api/listen/where/{self.sink_id}",
                                        params=params)).json()
            async with self.open_peer() as peer:
                self.peer = peer
                try:
                    if "janus" in found:
                        await self._play_janus(found["janus"])
                    else:
                        await self._play_box()
                    await peer.wait_first_packet(timeout=10)
                    self.switched.set()
                    self.switched = trio.Event()
                    if not started:
                        started = True
                        task_status.started()
                    seen, at = peer.packets_received, trio.current_time()
                    while trio.current_time() - at < STALL_S:
                        await trio.sleep(0.02)      # polls a counter aiortc's thread moves
                        if peer.packets_received != seen:
                            seen, at = peer.packets_received, trio.current_time()
                finally:
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(3):
                            await self._leave()
            avoid = self.where if self.where != "box" else None
