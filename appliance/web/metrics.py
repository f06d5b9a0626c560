"""``GET /metrics``: the box in Prometheus' text format (``appliance.metrics``)
for a fleet's monitoring. An admin endpoint that also takes its own scrape
token (``[admin] metrics_token``, a bearer that opens nothing else), over
HTTPS like every admin credential (``auth.scrape``)."""
from __future__ import annotations

from quart import Blueprint, Response

from .. import metrics
from .admin import status_reading
from .auth import scrape

__all__ = ["blueprint"]

blueprint = Blueprint("metrics", __name__)


@blueprint.route("/metrics", methods=["GET"])
@scrape
async def scrape_metrics() -> Response:
    return Response(metrics.scrape(status_reading), content_type=metrics.CONTENT_TYPE,
                    headers={"Cache-Control": "no-store"})
