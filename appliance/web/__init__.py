"""The web app: ``create_app(config)`` gives a Quart-Trio app whose lifespan
opens the engine and the service (``appliance.service.open_service``).

Blueprints are registered from ``BLUEPRINTS`` below, in order: add yours
there. A blueprint asks the service for everything (``common.service()``,
an ``appliance.service.Service``: its one door into the appliance; state is
kept by the service, not by blueprints), and reads the config as
``current_app.appliance_config``. Who may reach a route is
decided in one place (``auth.check_request`` before each request): a route
is admin-only unless ``auth`` marks it public or listening; only listening
answers carry CORS headers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from quart import Blueprint, Response, has_request_context, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..config import Config
from ..errors import ApplianceError, NotFoundError
from ..service import Service, open_service
from ..admin_auth import AdminAuth
from . import (admin, auth, devices, events, hat_controls, health, listening, login, metrics,
               outbound, signs, ui, update, venue, whep, whip)
from .common import plain
from .errors import error_response, http_error_response
from .streaming import StreamingConnection, StreamingRequest

__all__ = ["create_app", "BLUEPRINTS", "plain"]

PACKAGE = Path(__file__).resolve().parent.parent

# Every blueprint of the app, in registration order. The web UI adds its own
# here; each is a ``quart.Blueprint``.
BLUEPRINTS: list[Blueprint] = [
    whep.blueprint,
    whip.blueprint,
    outbound.publications,
    outbound.relays,
    admin.blueprint,
    events.blueprint,
    hat_controls.blueprint,
    devices.blueprint,
    ui.blueprint,
    login.blueprint,
    listening.blueprint,
    health.blueprint,
    metrics.blueprint,
    signs.blueprint,
    venue.blueprint,
    update.blueprint,
]


def create_app(config: Config, *, service: Service | None = None) -> QuartTrio:
    """The app. Without ``service`` its lifespan opens one (engine included)
    and closes it at shutdown, ending every listener; with one, the caller
    owns it."""
    app = QuartTrio("appliance", static_folder=str(PACKAGE / "static"),
                    template_folder=str(PACKAGE / "templates"))
    app.appliance_config = config
    app.service = service
    app.admin_auth = AdminAuth(
        state_dir=config.state_dir, token=config.admin.token,
        password_hash=config.admin.password_hash,
        setup_code_file=config.admin.setup_code_file, listen_pin=config.server.listen_pin,
        metrics_token=config.admin.metrics_token)
    app.admin_setup_lock = trio.Lock()
    # Quart enforces this while the body streams in (413 before buffering it all),
    # except on the routes that stream their bodies and bound them themselves
    # (web/streaming.py: an update bundle).
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    app.request_class = StreamingRequest
    app.asgi_http_class = StreamingConnection
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = config.server.shutdown_timeout_s + 2
    app.config["BODY_TIMEOUT"] = 10
    app.config["JSON_SORT_KEYS"] = False

    if service is None:
        stopped = trio.Event()
        stop = trio.Event()

        async def run_service(*, task_status: trio.TaskStatus[Service]) -> None:
            try:
                async with open_service(config) as svc:
                    task_status.started(svc)
                    await stop.wait()
            finally:
                stopped.set()

        @app.before_serving
        async def start_service() -> None:
            app.service = await app.nursery.start(run_service)

        @app.after_serving
        async def stop_service() -> None:
            if app.service is not None:
                app.service.begin_close()
            stop.set()
            with trio.move_on_after(config.server.shutdown_timeout_s + 1):
                await stopped.wait()

    logged = app.log_exception

    def log_exception(exc_info: Any) -> None:
        # a start that fails for a known reason (the engine cannot have its
        # port, a file cannot be written) is one line; `appliance run` says
        # it again on stderr and exits 2
        error = exc_info[1]
        if not has_request_context() and (
                isinstance(error, (OSError, ApplianceError))
                or any(c.__name__ == "EngineError" for c in type(error).__mro__)):
            app.logger.error("cannot start: %s", error)
            return
        logged(exc_info)

    app.log_exception = log_exception  # type: ignore[method-assign]

    @app.before_serving
    async def open_setup() -> None:
        # writes (and logs) the one-time setup code when no password is set
        await trio.to_thread.run_sync(app.admin_auth.open_setup)

    app.before_request(auth.check_request)
    app.after_request(auth.cors)

    @app.errorhandler(ApplianceError)
    async def appliance_error(error: ApplianceError) -> Response:
        return error_response(error)

    @app.errorhandler(OSError)
    async def static_name_refused(error: OSError) -> Response:
        # a static file name the file system refuses (ENAMETOOLONG: a 500
        # found by tests/web/test_route_fuzz.py) is no such file
        if request.endpoint == "static":
            return error_response(NotFoundError("no such file"))
        raise error

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return http_error_response(error, config.server.max_body_bytes)

    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app
