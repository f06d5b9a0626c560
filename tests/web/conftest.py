"""A real appliance server (hypercorn + Quart-Trio + the real engine) on an
ephemeral loopback port, and helpers to talk WHEP to it."""
from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import trio

from appliance.cli import serve
from appliance.config import AdminConfig, Config, parse_config
from appliance.passwords import hash_password
from appliance.service import Service
from appliance.tls import TLSError, certificate_addresses, keep_certificate, own_pair
from appliance.web import create_app
from tests.support.webrtc import dominant_frequency, open_aiortc_listener
from tests.support.trust import TRUST

SDP = {"Content-Type": "application/sdp"}

# The admin credentials of every test server (the admin API always needs one).
ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN_PASSWORD = "correct horse battery staple"
ADMIN_HASH = hash_password(ADMIN_PASSWORD)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_config(state_dir: Path, *, data: dict[str, Any] | None = None,
                admin: AdminConfig | None = None, **server: Any) -> Config:
    """A test config: no sound card (tone -> main), loopback ICE only, any
    free HTTP and HTTPS ports,
    generous rate limits, the admin token and password above (``admin``
    replaces them, e.g. ``AdminConfig()`` for the default: none);
    ``server`` overrides ServerConfig fields."""
    config = parse_config(data or {}, cards=[])
    if admin is None:
        admin = AdminConfig(token=ADMIN_TOKEN, password_hash=ADMIN_HASH)
    defaults = dict(host="127.0.0.1", port=0, https_port=0, post_rate_per_s=1000.0, post_burst=1000,
                    max_listeners=300, shutdown_timeout_s=10.0, max_connecting_per_client=1000,
                    max_event_streams_per_client=1000, sap_port=0)
    defaults.update(server)
    return config.replace(
        state_dir=state_dir, admin=admin,
        server=dataclasses.replace(config.server, **defaults),
        # any free port: test servers run side by side
        engine=dataclasses.replace(config.engine, ice_addresses=("127.0.0.1",), lean_port=0))


@dataclass
class Server:
    url: str
    app: Any
    client: httpx.AsyncClient
    stop: trio.Event
    done: trio.Event

    @property
    def service(self) -> Service:
        return self.app.service

    async def post_offer(self, offer: str, path: str = "/api/whep/main",
                         **kw: Any) -> httpx.Response:
        headers = {**SDP, **kw.pop("headers", {})}
        return await self.client.post(path, content=offer, headers=headers, **kw)

    async def wait_idle(self, timeout: float = 10) -> dict[str, int]:
        """Wait until every session and every publisher (whose peer has left:
        the box notices a moment later) has finished its cleanup; returns the
        census."""
        with trio.fail_after(timeout):
            for session in list(self.service.sessions):
                await session.done.wait()
            for publisher in list(self.service.publishers.by_source.values()):
                await publisher.done.wait()
        return self.service.census()

    def session_for(self, response: httpx.Response):
        return self.service.sessions.by_id[response.headers["Location"].rsplit("/", 1)[1]]

    async def shutdown(self) -> None:
        self.stop.set()
        await self.done.wait()


IDLE = {"sessions": 0, "publishers": 0, "engine_listeners": 0, "engine_stats_listeners": 0,
        "temporary_sinks": 0, "temporary_routes": 0}


async def heard_hz(server: Server, path: str = "/api/whep/main", *, seconds: float = 0.5) -> float:
    """What a real WebRTC peer hears through ``path`` for ``seconds``: its
    dominant frequency (it posts its offer, connects, records, leaves)."""
    async with open_aiortc_listener() as peer:
        answer = await server.post_offer(await peer.create_offer(), path)
        assert answer.status_code == 201, answer.text
        await peer.accept_answer(answer.text)
        await peer.wait_connected()
        heard = dominant_frequency(await peer.record(seconds))
        await server.client.delete(answer.headers["Location"])
    return heard


# A box makes its HTTPS certificate at its first start (appliance.tls: an
# openssl run, ~15 ms, a few hundred times a run). A test's box with none yet
# gets a copy of the pair a box before it made for the same names, the same
# as it would make; tests/web/test_https.py has its boxes make their own.
_MADE_CERTIFICATES: dict[tuple[str, ...], tuple[bytes, bytes]] = {}


def _certificate_pair(config: Config) -> tuple[tuple[str, ...], Path, Path] | None:
    """Which names a box's own certificate gets, and where it is kept; None
    when the config names a certificate of its own."""
    if config.server.certfile or config.server.keyfile:
        return None
    return (tuple(certificate_addresses(config.server.captive_redirect)),
            *own_pair(config.state_dir))


def _give_made_certificate(config: Config) -> bool | None:
    """Keep the pair made before in a box with no certificate folder yet:
    True when given, False when the box makes its own, None when it has one."""
    pair = _certificate_pair(config)
    if pair is None or pair[1].parent.exists():
        return None
    names, cert, _ = pair
    if names not in _MADE_CERTIFICATES:
        return False
    try:
        keep_certificate(cert.parent, *_MADE_CERTIFICATES[names])
    except TLSError:   # a state_dir that cannot be: the box says so itself
        return None
    return True


def _keep_made_certificate(config: Config) -> None:
    pair = _certificate_pair(config)
    if pair is not None and pair[0] not in _MADE_CERTIFICATES:
        names, cert, key = pair
        _MADE_CERTIFICATES[names] = (cert.read_bytes(), key.read_bytes())


@asynccontextmanager
async def open_server(config: Config, *, service: Service | None = None,
                      headers: dict[str, str] | None = None,
                      own_certificate: bool = False) -> AsyncIterator[Server]:
    """Serve ``create_app(config)`` (its lifespan owns engine and service),
    or ``create_app(config, service=service)`` when the test owns one.
    ``server.client`` sends ``headers`` (default: the admin token). A box
    with no certificate yet gets a copy of one made before for the same
    names, unless ``own_certificate`` (then it makes its own, as at a first
    start)."""
    given = None if own_certificate else _give_made_certificate(config)
    app = create_app(config, service=service)
    stop, done = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(config, app=app, shutdown_trigger=stop.wait, task_status=task_status)
            finally:
                done.set()

        binds = await nursery.start(run)
        if given is False:   # made now: the next boxes get it
            _keep_made_certificate(config)
        async with httpx.AsyncClient(base_url=binds[0], timeout=15, verify=TRUST,
                                     headers=ADMIN if headers is None else headers) as client:
            server = Server(binds[0], app, client, stop, done)
            try:
                yield server
            finally:
                stop.set()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with open_server(make_config(tmp_path)) as s:
        yield s
