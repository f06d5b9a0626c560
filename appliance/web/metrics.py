"""``GET /metrics``: the box in Prometheus' text format (``appliance.metrics``)
for a fleet's monitoring. An admin endpoint that also takes its own scrape
token (``[admin] metrics_token``, a bearer that opens nothing else), over
HTTPS like every admin credential (``auth.scrape``)."""
from __future__ import annotations

from quart import Blueprint, Response

from .admin import status_reading
from .auth import scrape
from .common import service

__all__ = ["blueprint"]

blueprint = Blueprint("metrics", __name__)


@blueprint.route("/metrics", methods=["GET"])
@scrape
async def scrape_metrics() -> Response:
    text, content_type = service().metrics_text(status_reading)
    return Response(text, content_type=content_type, headers={"Cache-Control": "no-store"})
