"""Hypercorn's trio worker with bounded connections.

``serve_app(app, binds, limits, ...)`` runs hypercorn (``hypercorn.trio.serve``) with
our ``Connection`` in place of its ``TCPServer``. Measured with hypercorn
0.18.0, whose ``TCPServer`` closes a connection from whichever task asks for
it, unshielded and outside its send lock:

- A response sent before the request body was read (404, 405, 415, 429, ...)
  asks to close from the app's task, which Quart-Trio cancels at that moment
  (the ``http.disconnect`` it gets ends its body reader, which cancels the
  request's nursery). The close never happens: the connection is neither
  read (a second request is never answered) nor closed (CLOSE-WAIT for good,
  one fd per request). ``Connection: close`` and HTTP/1.0 take the same path.
- The keep-alive timer is re-armed after a response from that same
  cancelled task, so it never is: an idle keep-alive connection stays open.
- When the loop was starved (a busy box) past the keep-alive, the timer and
  the reader of a request that came in time wake together, and when the
  timer runs first the request is dropped with no answer. The timer now
  leaves a connection open while the kernel holds bytes for its reader.
- ``send_eof`` from one task while another is in ``send_all`` raises
  ``trio.BusyResourceError`` (a half-closed request with a short body); the
  error escapes ``TCPServer.run`` into ``serve_listeners`` and the whole
  server exits.

``Connection`` keeps hypercorn's protocol code and changes only the ending:
asking to close cancels the connection's own scope (its reader, its idle
timer, its app tasks), and only then, with nobody else touching the socket,
the connection sends its FIN, reads and discards what the client still sends
for a moment (so a client still sending a body it was refused gets the answer
instead of a reset) and closes the socket. Every send has a deadline, so a
client that never reads cannot hold a task. An exception in one connection is
logged and ends that connection, never the server.

HTTP/1.1 only, on both ports (``_HTTP11Only``): hypercorn would otherwise
switch a plain connection to HTTP/2 on ``Upgrade: h2c`` or on the HTTP/2
preface (``PRI * HTTP/2.0``), and offer ``h2`` by ALPN over TLS. HTTP/2
connections escaped every limit above (measured: 200 idle ones stayed past
65 s, 1,100 of them used up the fds and /healthz timed out for 300 s; 40 of
them with 100 event streams each kept the app's thread at 100 % of a core).
Now an ``Upgrade: h2c`` is ignored (the answer is HTTP/1.1, RFC 9110 7.8),
the preface gets ``505`` and the connection closes, and TLS offers only
``http/1.1``. A TLS handshake must end within the keep-alive limit too.

An answer sent before the request body was all received says
``Connection: close`` (hypercorn closes such a connection after the answer;
the header tells the client not to send another request on it).

``guard(app)`` answers 400 for a ``Host`` header that Werkzeug cannot encode
(a label longer than 63 characters, an empty label): Werkzeug raises that
while Quart builds the request context, outside Quart's error handlers, which
made it a 500.
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import resource
import struct
import termios
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import h11
import hypercorn.protocol as _hypercorn_protocol
import hypercorn.trio.run as _hypercorn_run
import hypercorn.trio.tcp_server as _hypercorn_tcp
import trio
from hypercorn.config import Config as HypercornConfig, Sockets
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Response as StreamResponse
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.run import worker_serve
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.utils import wrap_app
from werkzeug.exceptions import BadHost

from . import captive
from .errors import BAD_REQUEST_LINE, HTTP_VERSION_REFUSED

__all__ = ["Limits", "Connection", "serve_app", "guard"]

log = logging.getLogger("appliance.web.server")


@dataclass(frozen=True)
class Limits:
    """How long a client may hold a connection (see docs/API.md)."""
    # idle between requests, and from connecting (or the last response) to
    # the end of the next request's headers: slow headers time out with it
    keep_alive_s: float = 10.0
    # one write to a client that does not read (an event stream's client
    # that stopped reading is gone within this)
    send_s: float = 10.0
    # after our FIN, how long we still read (and drop) what the client sends
    linger_s: float = 2.0
    linger_bytes: int = 1 << 20
    # request line and headers
    max_header_bytes: int = 16 * 1024
    # open requests (and event streams) when the server stops
    graceful_s: float = 2.0
    # open connections at once; None: what the fd limit leaves after a
    # reserve for the engine (see connection_limit). The box's own watchdog
    # ping (from 127.0.0.1 or ::1) is never refused.
    max_connections: int | None = None


# fds kept for the engine (ALSA, its sockets, webrtcbin listeners) and files
ENGINE_FD_RESERVE = 256
_WATCHDOG_PEERS = frozenset({"127.0.0.1", "::1"})


def connection_limit(limits: Limits) -> int:
    """How many connections may be open: the configured number, or the fd
    limit less a reserve for the engine (a quarter, at least 256). 1,100
    idle connections at a 1,024-fd limit once left /healthz and WHEP
    unanswered for 300 s."""
    if limits.max_connections is not None:
        return limits.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(64, soft - max(ENGINE_FD_RESERVE, soft // 4))


class _Config(HypercornConfig):
    """Hypercorn's config plus the limits only ``Connection`` reads, and its
    count of open connections."""
    send_timeout: float = Limits.send_s
    linger_timeout: float = Limits.linger_s
    linger_bytes: int = Limits.linger_bytes
    max_connections: int = 1 << 20
    open_connections: int = 0


def hypercorn_config(binds: list[str], limits: Limits, *, tls_binds: Sequence[str] = (),
                     certfile: str | None = None, keyfile: str | None = None) -> HypercornConfig:
    """Plain HTTP on ``binds``; with ``certfile`` and ``keyfile``, HTTPS on
    ``tls_binds`` too. HTTP/1.1 only on both."""
    config = _Config()
    if certfile and keyfile and tls_binds:
        config.bind = list(tls_binds)       # hypercorn: "bind" is TLS when a cert is set
        config.insecure_bind = list(binds)
        config.certfile, config.keyfile = str(certfile), str(keyfile)
    else:
        config.bind = list(binds)
    config.alpn_protocols = ["http/1.1"]
    # AES-GCM where the CPU has AES instructions, ChaCha20 for the Pi 4's (it has none)
    config.ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20"
    config.ssl_handshake_timeout = limits.keep_alive_s
    config.keep_alive_timeout = limits.keep_alive_s
    config.h11_max_incomplete_size = limits.max_header_bytes
    config.graceful_timeout = limits.graceful_s
    config.send_timeout = limits.send_s
    config.linger_timeout = limits.linger_s
    config.linger_bytes = limits.linger_bytes
    config.max_connections = connection_limit(limits)
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


class _Refused(Exception):
    """The request was answered with an error and the connection must close."""


class _H11Only(H11Protocol):
    """hypercorn's HTTP/1.1 protocol that never becomes HTTP/2."""

    async def _check_protocol(self, event: h11.Request) -> None:
        # ``Upgrade: h2c`` is ignored (nothing to do: the request is served
        # as HTTP/1.1); the HTTP/2 preface (prior knowledge) is refused.
        if event.http_version not in (b"1.0", b"1.1"):
            await self._send_error_response(HTTP_VERSION_REFUSED)
            raise _Refused

    async def stream_send(self, event: Any) -> None:
        if isinstance(event, StreamResponse) and event.status_code >= 200 \
                and self.connection.their_state not in (h11.DONE, h11.MIGHT_SWITCH_PROTOCOL) \
                and not any(name.lower() == b"connection" for name, _ in event.headers):
            # answered before the request body was all received: hypercorn
            # will close after this answer, so say so (MIGHT_SWITCH_PROTOCOL:
            # a whole request that proposed an upgrade we decline)
            event = dataclasses.replace(event, headers=[*event.headers, (b"connection", b"close")])
        await super().stream_send(event)


class _HTTP11Only:
    """hypercorn's ``ProtocolWrapper`` without its switch to HTTP/2 (h2c
    upgrade, prior knowledge, ALPN h2)."""

    def __init__(self, app: Any, config: Any, context: Any, task_group: Any, state: Any,
                 ssl: bool, client: Any, server: Any, send: Callable[[Event], Awaitable[None]],
                 alpn_protocol: str | None = None) -> None:
        self.send = send
        self.protocol = _H11Only(app, config, context, task_group, state, ssl, client, server,
                                 send)

    async def initiate(self) -> None:
        await self.protocol.initiate()

    async def handle(self, event: Event) -> None:
        try:
            await self.protocol.handle(event)
        except _Refused:
            await self.send(Closed())


class Connection(TCPServer):
    """One client connection; hypercorn's ``TCPServer`` with a sound ending."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scope = trio.CancelScope()  # everything that may use the socket
        self._idle = True                 # no request under way (the protocol's Updated)

    async def run(self) -> None:
        config = self.config
        if config.open_connections >= config.max_connections and \
                _peer_host(self.stream) not in _WATCHDOG_PEERS:
            # no fd to spare: closed before a byte is read or sent
            await trio.aclose_forcefully(self.stream)
            return
        config.open_connections += 1
        try:
            await self._serve()
        finally:
            config.open_connections -= 1

    async def _serve(self) -> None:
        try:
            with self._scope:
                await super().run()  # its ``finally`` calls ``_close``
        except Exception:
            log.exception("connection from %s failed", _peer(self.stream))
        except BaseExceptionGroup as group:  # Cancelled (server stopping) with errors
            cancelled, errors = group.split(trio.Cancelled)
            if errors is not None:
                log.error("connection from %s failed", _peer(self.stream), exc_info=errors)
            if cancelled is not None:
                raise cancelled from None
        finally:
            await self._linger_and_close()

    async def _close(self) -> None:
        # Called by any task (the app's, the reader, run's finally): end them
        # all; the socket is shut down once they are gone (run's finally).
        self._scope.cancel()

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client closed (or the read failed). hypercorn leaves its
        # keep-alive timer running, so an idle connection kept its task and
        # fd until the timer ran out; nothing more can come on it. A request
        # still under way ends as before, then closes.
        if self._idle:
            self._scope.cancel()

    async def _idle_timeout(self) -> None:  # the keep-alive timer
        # hypercorn's, but a request that came in time is read, not dropped:
        # a starved loop (a busy box) wakes this timer and the reader at once
        # and may run the timer first. The reader, once it has the request,
        # stops this timer (Updated); bytes it never turns into one (a slow
        # client's fragments) meet the timer again.
        while True:
            with trio.move_on_after(self.config.keep_alive_timeout):
                await self.context.terminated.wait()
            if self.context.terminated.is_set() or not _unread_bytes(self.stream):
                break
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def _initiate_server_close(self) -> None:  # the keep-alive timer ran out
        # A timer that ran out as a request came in (its stop cannot cancel
        # the shielded close) must not cut that request's answer: cancelled
        # mid-write, hypercorn then sent a 500 after the response had begun
        # and the client got nothing (seen under load with a 0.5 s limit).
        if self._idle:
            self._scope.cancel()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            self._idle = event.idle
            # (Re)arming the keep-alive timer comes from the app's task right
            # after the response, when Quart-Trio has just cancelled it: the
            # timer was never armed and an idle connection stayed for good.
            with trio.CancelScope(shield=True):
                await super().protocol_send(event)
            return
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        if not event.data:   # the end of a body of known length: nothing to send
            return
        async with self.send_lock:
            # shielded so a cancel never cuts a response in half; bounded so
            # a client that never reads cannot hold this task
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.config.send_timeout
                try:
                    await self.stream.send_all(event.data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    scope.cancel()
        if scope.cancel_called:  # the client is gone or does not read: end it all
            self._scope.cancel()

    async def _linger_and_close(self) -> None:
        try:
            with trio.move_on_after(self.config.linger_timeout):
                await self.stream.send_eof()  # our FIN: the response is complete
                dropped = 0
                while dropped < self.config.linger_bytes:
                    data = await self.stream.receive_some(MAX_RECV)
                    if not data:
                        break
                    dropped += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, AttributeError):
            pass  # already gone; AttributeError: a TLS stream has no send_eof
        finally:
            # a TLS stream sends its close_notify first: bounded like any send
            # (trio closes the socket even when that is cancelled)
            with trio.move_on_after(self.config.linger_timeout):
                await self.stream.aclose()  # closes the fd before its checkpoint


def _raw_socket(stream: Any) -> Any:
    """The socket under a connection's stream (under TLS, its transport's);
    AttributeError for a stream that has none."""
    return getattr(stream, "transport_stream", stream).socket


def _unread_bytes(stream: Any) -> int:
    """How many bytes the kernel holds for this connection's reader (0 when
    that cannot be told)."""
    try:
        fd = _raw_socket(stream).fileno()
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])
    except (AttributeError, OSError, ValueError):
        return 0


def _peer_host(stream: Any) -> str:
    try:
        return str(_raw_socket(stream).getpeername()[0])
    except (AttributeError, OSError, IndexError):
        return "?"


def _peer(stream: Any) -> str:
    try:
        return str(_raw_socket(stream).getpeername())
    except (AttributeError, OSError):
        return "?"


def _install() -> None:
    """Make hypercorn's trio worker use ``Connection`` (it looks ``TCPServer``
    up in its ``run`` module). Checked against the version it was measured on."""
    if _hypercorn_run.TCPServer is Connection:
        return
    if _hypercorn_run.TCPServer is not TCPServer:
        raise RuntimeError("hypercorn.trio.run.TCPServer is not hypercorn's TCPServer")
    if _hypercorn_tcp.ProtocolWrapper is not _hypercorn_protocol.ProtocolWrapper:
        raise RuntimeError("hypercorn.trio.tcp_server.ProtocolWrapper is not hypercorn's")
    _hypercorn_tcp.ProtocolWrapper = _HTTP11Only  # what TCPServer.run makes per connection
    _hypercorn_run.TCPServer = Connection


def guard(app: Any) -> Callable[..., Awaitable[None]]:
    """``app`` behind a check of the ``Host`` header (the rule is Werkzeug's
    own: ``url_map.bind`` raises ``BadHost``)."""
    config = getattr(app, "appliance_config", None)
    captive_to = config.server.captive_redirect if config is not None else ""
    names = captive.own_names()

    async def guarded(scope: dict[str, Any], receive: Callable[..., Awaitable[Any]],
                      send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((value for name, value in scope["headers"] if name.lower() == b"host"), b"")
            if captive_to and scope["type"] == "http" \
                    and not captive.is_own_host(host.decode("latin-1"), names):
                await _redirect(send, captive_to)   # before routing and authentication
                return
            try:
                app.url_map.bind(host.decode("latin-1"))
            except BadHost:
                await _refuse(scope, send, b"the Host header is not a valid host name\n")
                return
        await app(scope, receive, send)

    return guarded


async def _refuse(scope: dict[str, Any], send: Callable[..., Awaitable[None]],
                  reason: bytes) -> None:
    """Answer 400 with ``reason`` at the ASGI level (a websocket handshake
    through hypercorn's ``websocket.http.response`` extension)."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close"})  # an HTTP 403
        return
    prefix = "http" if scope["type"] == "http" else "websocket.http"
    await send({"type": f"{prefix}.response.start", "status": BAD_REQUEST_LINE,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(reason)).encode()),
                            (b"connection", b"close")]})
    await send({"type": f"{prefix}.response.body", "body": reason})


async def _redirect(send: Callable[..., Awaitable[None]], location: str) -> None:
    await send({"type": "http.response.start", "status": 302,
                "headers": [(b"location", location.encode("latin-1")),
                            (b"cache-control", b"no-store"), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def _listen(config: HypercornConfig, binds: Sequence[str], key: str) -> list[Any]:
    """Listening sockets for ``binds``; an OSError names the address and the
    config key ("cannot listen on 0.0.0.0:80 (server.port): Address already in use")."""
    out: list[Any] = []
    for bind in binds:
        try:
            out += config._create_sockets([bind])
        except OSError as error:
            for sock in out:
                sock.close()
            raise OSError(error.errno, f"cannot listen on {bind} ({key}): "
                          f"{error.strerror or error}") from None
    for sock in out:
        sock.listen(config.backlog)
    return out


async def serve_app(app: Any, binds: list[str], limits: Limits = Limits(), *,
                    shutdown_trigger: Callable[[], Awaitable[None]],
                    tls_binds: Sequence[str] = (), certfile: str | None = None,
                    keyfile: str | None = None,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` (a Quart app) on ``binds`` ("127.0.0.1:8080"), and over
    HTTPS on ``tls_binds`` with ``certfile``/``keyfile``, until
    ``shutdown_trigger`` returns; ``task_status`` gets the bound URLs, the
    plain ones first ("http://127.0.0.1:8080", "https://127.0.0.1:8443")."""
    _install()
    config = hypercorn_config(binds, limits, tls_binds=tls_binds, certfile=certfile,
                              keyfile=keyfile)
    # bound here, before the app starts (the engine), each named if it fails
    insecure = _listen(config, binds, "server.port")
    try:
        secure = _listen(config, tls_binds, "server.https_port") if config.ssl_enabled else []
    except OSError:
        for sock in insecure:
            sock.close()
        raise
    sockets = Sockets(secure, insecure, [])

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await worker_serve(wrap_app(guard(app), config.wsgi_max_body_size, "asgi"), config,
                               sockets=sockets, shutdown_trigger=shutdown_trigger,
                               task_status=task_status)
        finally:
            for sock in (*secure, *insecure):
                sock.close()

    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(run)
        task_status.started([u for u in urls if u.startswith("http://")]
                            + [u for u in urls if not u.startswith("http://")])

