"""The web app: ``create_app(config)`` gives a Quart-Trio app whose lifespan
opens the engine and the service (``appliance.service.open_service``).

Blueprints are registered from ``BLUEPRINTS`` below, in order: add yours
there (pages, static files, a mixer API, ...). A blueprint reaches the
service as ``current_app.service`` (an ``appliance.service.Service``), the
config as ``current_app.appliance_config``, and persists its own state with
``await current_app.service.store.save_section(name, value)`` /
``current_app.service.store.section(name)``. Every ``/api/...`` request
except OPTIONS needs the bearer token when one is configured
(``auth.require_token`` runs before each request); pages outside ``/api``
are public.
"""
from __future__ import annotations

from pathlib import Path

import trio
from quart import Blueprint, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..config import Config
from ..service import Service, ServiceError, open_service
from . import admin, auth, events, health, mixer, ui, whep
from .common import plain

__all__ = ["create_app", "BLUEPRINTS", "plain"]

PACKAGE = Path(__file__).resolve().parent.parent

# Every blueprint of the app, in registration order. The web UI adds its own
# here (pages, static assets, mixer); each is a ``quart.Blueprint``.
BLUEPRINTS: list[Blueprint] = [
    whep.blueprint,
    admin.blueprint,
    events.blueprint,
    mixer.blueprint,
    ui.blueprint,
    health.blueprint,
]


def create_app(config: Config, *, service: Service | None = None) -> QuartTrio:
    """The app. Without ``service`` its lifespan opens one (engine included)
    and closes it at shutdown, ending every listener; with one, the caller
    owns it."""
    app = QuartTrio("appliance", static_folder=str(PACKAGE / "static"),
                    template_folder=str(PACKAGE / "templates"))
    app.appliance_config = config
    app.service = service
    # Quart enforces this while the body streams in (413 before buffering it all).
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
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

    app.before_request(auth.require_token)

    @app.after_request
    async def cors(response: Response) -> Response:
        if request.path.startswith("/api/"):
            response.headers["Access-Control-Allow-Origin"] = config.server.cors_origin
            response.headers["Access-Control-Expose-Headers"] = (
                "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After")
            if config.server.cors_origin != "*":
                response.headers["Vary"] = "Origin"
            if request.method == "OPTIONS" and "Access-Control-Allow-Methods" not in response.headers:
                # Quart's automatic OPTIONS (admin, candidates): make it a CORS preflight
                response.headers["Access-Control-Allow-Methods"] = response.headers.get(
                    "Allow", "GET, POST, PATCH, DELETE, OPTIONS")
                response.headers["Access-Control-Allow-Headers"] = (
                    "Authorization, Content-Type, If-Match")
                response.headers["Access-Control-Max-Age"] = "600"
        return response

    @app.errorhandler(ServiceError)
    async def service_error(error: ServiceError) -> Response:
        return plain(error.message, error.status, error.headers)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        reasons = {413: f"the body is larger than {config.server.max_body_bytes} bytes"}
        response = plain(reasons.get(error.code, error.description or error.name),
                         error.code or 500)
        if error.code == 413:
            # the rest of the body is never read: the connection cannot be reused
            response.headers["Connection"] = "close"
        if error.code == 405 and error.response is None:
            allowed = getattr(error, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app
