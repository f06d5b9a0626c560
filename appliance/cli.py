"""``appliance``: the command line.

    appliance run [--config FILE] [--host HOST] [--port PORT] [--https-port PORT]
                  [--log-level LEVEL]
    appliance check-config FILE
    appliance update FILE [--no-reboot]
    appliance version

``run`` serves the web app with hypercorn's trio worker until SIGTERM or
SIGINT, then stops within a deadline: new requests are refused, every
listener is cleaned up, the engine is closed. Under systemd (Type=notify) it
reports READY=1 once listening, STOPPING=1, and pings the watchdog. It
serves plain HTTP on ``[server] port`` and HTTPS on ``https_port`` (the admin
side needs it: ``appliance.tls``); a port that is taken, a certificate that
cannot be made, an engine that cannot start is one line on stderr and exit
code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import signal
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

import trio

from . import __version__, systemd
from .config import Config, ConfigError, load_config, prepare_dirs
from .model import redacted

if TYPE_CHECKING:
    from .web.server import Limits

__all__ = ["main", "serve"]

log = logging.getLogger("appliance")


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def serve(config: Config, *, app: Any = None,
                shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                limits: Limits | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` (default: ``create_app(config)``) until SIGTERM/SIGINT, or
    until ``shutdown_trigger`` returns when one is given (signals are then left
    alone); ``task_status`` gets the bound addresses ("http://127.0.0.1:8080").
    ``limits`` bound how long a client may hold a connection (default:
    ``Limits()``). The systemd watchdog is fed while ``GET /healthz``
    answers through the server. The HTTPS certificate is loaded or made
    first (``appliance.tls``); its fingerprint is logged, goes into the setup
    code's file and is shown on the admin page."""
    from .tls import certificate_addresses, load_certificate
    from .web import create_app, health
    from .web.server import Limits, serve_app

    limits = Limits() if limits is None else limits

    if app is None:
        app = create_app(config)
    cert = await trio.to_thread.run_sync(partial(
        load_certificate, config.state_dir, config.server.certfile, config.server.keyfile,
        addresses=certificate_addresses(config.server.captive_redirect)))
    log.info("HTTPS certificate %s%s, SHA-256 fingerprint %s", cert.certfile,
             " (made now)" if cert.made else "", cert.fingerprint)
    app.tls_fingerprint = cert.fingerprint
    app.admin_auth.tls_fingerprint = cert.fingerprint   # into the setup code's file
    stop = trio.Event()
    deadline = config.server.shutdown_timeout_s + limits.graceful_s + 5

    async def on_stop() -> None:
        await stop.wait()
        systemd.notify("STOPPING=1")
        log.info("stopping")
        if app.service is not None:
            app.service.begin_close()

    async with trio.open_nursery() as nursery:
        async def run_server(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve_app(app, [_bind(config.server.host, config.server.port)], limits,
                                shutdown_trigger=on_stop,
                                tls_binds=[_bind(config.server.host, config.server.https_port)],
                                certfile=str(cert.certfile), keyfile=str(cert.keyfile),
                                task_status=task_status)
            finally:
                nursery.cancel_scope.cancel()

        async def signals(*, task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                task_status.started()
                async for signum in received:
                    if not stop.is_set():
                        log.info("%s received", signal.Signals(signum).name)
                        stop.set()
                    else:
                        log.warning("second signal: stopping at once")
                        nursery.cancel_scope.cancel()

        async def external_trigger() -> None:
            assert shutdown_trigger is not None
            await shutdown_trigger()
            stop.set()

        async def hard_deadline() -> None:
            await stop.wait()
            await trio.sleep(deadline)
            log.error("shutdown took longer than %.0f s: cancelling", deadline)
            nursery.cancel_scope.cancel()

        if shutdown_trigger is None:
            await nursery.start(signals)
        else:
            nursery.start_soon(external_trigger)
        nursery.start_soon(hard_deadline)
        binds = await nursery.start(run_server)
        app.appliance_ports = {url.partition(":")[0]: int(url.rsplit(":", 1)[1]) for url in binds}
        log.info("serving %s on %s", config.name, ", ".join(binds))
        systemd.notify("READY=1", f"STATUS=serving on {', '.join(binds)}")
        nursery.start_soon(systemd.run_watchdog, partial(health.answers, binds[0]))
        task_status.started(binds)


def _startup_error(error: BaseException) -> str | None:
    """One line for why ``run`` could not start (a port taken, a certificate
    or an engine that cannot be had), or None for anything else."""
    from hypercorn.utils import LifespanFailureError
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)
    walk(error)
    for leaf in leaves:
        if isinstance(leaf, ConfigError):
            return leaf.message
        if isinstance(leaf, OSError):
            return leaf.strerror or str(leaf)
        if isinstance(leaf, LifespanFailureError):
            cause = leaf.__cause__ or leaf.__context__
            text = str(cause) if cause is not None else str(leaf)
            if "UDP port" in text:
                text += " (engine.lean_port)"
            return f"cannot start: {text}"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance", description="Listening appliance: line-in to every browser on the LAN.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the web app and the audio engine")
    run.add_argument("--config", metavar="FILE", help="TOML config file")
    run.add_argument("--host", help="address to listen on (default from config: 0.0.0.0)")
    run.add_argument("--port", type=int, help="port to listen on (default from config: 8080)")
    run.add_argument("--https-port", type=int,
                     help="HTTPS port for the admin side (default from config: 8443)")
    run.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("file")
    update = sub.add_parser("update", help="install a signed update bundle (.raucb) into the "
                            "other root slot and reboot into it on trial (as root, on the appliance)")
    update.add_argument("file")
    update.add_argument("--no-reboot", action="store_true",
                        help="install only; the next `boot-slot reboot-trial` tries it")
    sub.add_parser("version", help="print the version")
    return parser


# The image's boot selector (image/files/common/usr/lib/appliance/boot-slot).
BOOT_SLOT = "/usr/lib/appliance/boot-slot"


def _update(file: str, reboot: bool) -> int:
    """A verity payload checked whole first (bundle_check); then RAUC checks
    the signature and the compatible string, writes the slot we are not
    running from and names it for one trial boot."""
    import os
    import shutil
    import subprocess
    from pathlib import Path
    from .bundle_check import check_payload
    from .errors import ApplianceError
    path = os.path.abspath(file)   # never read as an option
    if not os.path.isfile(path):
        print(f"appliance: update: {file!r} is not a file", file=sys.stderr)
        return 2
    if shutil.which("rauc") is None:
        print("appliance: update: rauc is not installed (only the appliance image has it)",
              file=sys.stderr)
        return 2
    try:
        trio.run(check_payload, Path(path))
    except ApplianceError as error:
        print(f"appliance: update: {error.message}", file=sys.stderr)
        return 1
    if subprocess.run(["rauc", "install", path]).returncode != 0:
        print("appliance: update refused or failed; nothing changed", file=sys.stderr)
        return 1
    if not reboot:
        print(f"installed; `{BOOT_SLOT} reboot-trial` boots it once on trial")
        return 0
    print("installed; rebooting into it on trial (kept only if it comes up healthy)", flush=True)
    return subprocess.run([BOOT_SLOT, "reboot-trial"]).returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "update":
        return _update(args.file, not args.no_reboot)
    if args.command == "check-config":
        try:
            config = load_config(args.file)
        except ConfigError as error:
            print(f"appliance: {error}", file=sys.stderr)
            return 2
        print(redacted(config))   # it names the secrets that are set, never their values
        return 0
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        server = config.server
        if args.host is not None:
            server = dataclasses.replace(server, host=args.host)
        if args.port is not None:
            if not 0 <= args.port <= 65535:
                raise ConfigError("--port must be between 0 and 65535")
            server = dataclasses.replace(server, port=args.port)
        if args.https_port is not None:
            if not 0 <= args.https_port <= 65535:
                raise ConfigError("--https-port must be between 0 and 65535")
            server = dataclasses.replace(server, https_port=args.https_port)
        if server.port and server.port == server.https_port:
            raise ConfigError("the HTTP and HTTPS ports must differ")
        config = config.replace(server=server)
        prepare_dirs(config)
    except ConfigError as error:
        print(f"appliance: {error}", file=sys.stderr)
        return 2
    # A WHEP POST makes several hundred short-lived objects, nearly all freed
    # by their reference counts: the young generation collected every 10000
    # allocations instead of 700 costs ~0.2 ms less CPU per POST (of ~2).
    gc.set_threshold(10_000)
    try:
        trio.run(serve, config)
    except BaseException as error:  # a port is taken, no certificate, no engine
        message = _startup_error(error) if isinstance(error, Exception) else None
        if message is None:
            raise
        print(f"appliance: {message}", file=sys.stderr)
        return 2
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
