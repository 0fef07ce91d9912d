"""Ops dashboard, summary and metrics (issue: ops dashboard). Route handlers are listed in ROUTES.

    GET /metrics        Prometheus text (every worker's counters + gauges read at scrape); admin token
                        unless OMS_METRICS_PUBLIC=1
    GET /ops/summary    the dashboard's JSON (admin token)
    GET /ops/map        the city as H3 hexagons for the dashboard map (admin token)
    GET /ops            the dashboard page (static; it asks for the admin token itself)
    GET /ops/assets/{name}  its script, style sheet and the Grafana dashboard JSON
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

from litestar import Response, get
from litestar.params import Parameter

from oms.ops import summary as ops

from oms.ops import metrics
from oms.api.auth import admin_guard
from oms.errors import InvalidInput, NotFound
from oms.wiring import Services

STATIC_DIR = Path(__file__).resolve().parent.parent / "ops" / "static"
#: the files GET /ops/assets/{name} serves, with their media types (litestar adds the charset to text/*)
ASSETS = {
    "ops.js": "text/javascript",
    "ops.css": "text/css",
    "grafana-dashboard.json": "application/json",
}
_WORKER = {"X-OMS-Worker": str(os.getpid())}
_NO_CACHE = {"Cache-Control": "no-store"}


async def metrics_guard(connection, handler) -> None:  # noqa: ANN001 - litestar guard signature
    """The admin token, unless OMS_METRICS_PUBLIC=1 opened /metrics to any scraper."""
    if not connection.app.state.services.settings.metrics_public:
        await admin_guard(connection, handler)


@get("/metrics", summary="Prometheus metrics of every worker process, plus store load and the oversell check",
     description="Admin token (bearer) unless the server runs with OMS_METRICS_PUBLIC=1.",
     tags=["ops"], media_type="text/plain", guards=[metrics_guard])
async def prometheus_metrics(services: Services) -> Response[bytes]:
    extra = await ops.scrape_gauges(services)
    body, content_type = metrics.exposition(extra)
    # litestar adds "; charset=utf-8" to text/* itself
    media_type = content_type.replace("; charset=utf-8", "")
    return Response(body, media_type=media_type, headers={**_WORKER, **_NO_CACHE})


@get("/ops/summary", guards=[admin_guard], tags=["ops"],
     summary="Live sale summary: orders per minute per channel, GMV, backorders, stock-outs, store load, "
             "at-risk orders, routing p50/p99 and the oversell check")
async def ops_summary(
    services: Services,
    since: Annotated[str | None, Parameter(description="start of the totals (ISO-8601 with offset); "
                                                       "default: today 00:00 +08:00")] = None,
    city: Annotated[str | None, Parameter(description="draw this city's map (nodes.city)")] = None,
    fresh: Annotated[bool, Parameter(description="skip the one-second shared cache")] = False,
) -> Response[ops.Summary]:
    start = None
    if since:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            raise InvalidInput("since: not an ISO-8601 time", field="since") from None
        if start.tzinfo is None:
            raise InvalidInput("since: needs a timezone offset", field="since")
    body = await ops.summary_json(services, since=start, city=city, fresh=fresh)
    return Response(body, media_type="application/json", headers={**_WORKER, **_NO_CACHE})


@get("/ops/map", guards=[admin_guard], tags=["ops"],
     summary="The city as H3 hexagons (each belongs to the nearest store delivering there) and its nodes")
async def ops_map(
    services: Services,
    city: Annotated[str | None, Parameter(description="nodes.city to draw; default: the main cluster")] = None,
) -> ops.CityMap:
    return await ops.build_map(services, city)


def _static(name: str, media_type: str) -> Response[bytes]:
    return Response((STATIC_DIR / name).read_bytes(), media_type=media_type, headers=_NO_CACHE)


@get("/ops", tags=["ops"], summary="The live ops dashboard page (asks for the admin token, keeps it for the tab)",
     media_type="text/html", include_in_schema=True)
async def ops_page() -> Response[bytes]:
    return _static("ops.html", "text/html")


@get("/ops/assets/{name:str}", tags=["ops"], summary="The dashboard's script, style sheet and Grafana dashboard",
     include_in_schema=False)
async def ops_asset(name: str) -> Response[bytes]:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no asset '{name}'", field="name")
    return _static(name, media_type)


ROUTES: list = [prometheus_metrics, ops_summary, ops_map, ops_page, ops_asset]
