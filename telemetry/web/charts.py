"""Charts over HTTP: one statistic of a metric over time for many sensors (`GET /series`), in
the shape Grafana's Infinity data source reads (rows of time in epoch ms, sensor, value; times
in and out in epoch ms)."""

from __future__ import annotations

import fnmatch
from typing import Annotated

from fastapi import APIRouter, Query, Response

from analytics.groupby import selected_sensors
from analytics.query import Stores, now_ms
from analytics.series import MAX_SERIES, STATISTICS, Point, series
from analytics.times import parse_time_ms
from ingest.contract.reading import METRIC_NAME
from ingest.devices import DeviceRegistry
from telemetry.web.devices import Where, selector
from telemetry.web.params import parameter


def charts_router(stores: Stores, registry: DeviceRegistry) -> APIRouter:
    router = APIRouter()

    @router.get("/series")
    def chart_series(
        response: Response,
        metric: Annotated[str, Query(pattern=f"^{METRIC_NAME.pattern}$")],
        stat: Annotated[str, Query(pattern="^(" + "|".join(STATISTICS) + ")$")] = "mean",
        sensor: Annotated[str, Query(description="sensor id glob", max_length=200)] = "*",
        where: Where = None,
        from_: Annotated[str, Query(alias="from", max_length=40,
                                    description="epoch ms, ISO 8601 or a time ago")] = "1h",
        to: Annotated[str, Query(max_length=40, description="epoch ms, ISO 8601 or now")] = "now",
        interval_ms: Annotated[int, Query(ge=0, le=10**11,
                                          description="the chart's interval; 0: auto")] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_SERIES, description="most sensors")] = 20,
    ) -> list[Point]:  # fmt: skip
        """A row per bucket and sensor, oldest first, for the first `limit` sensors (by id)
        matching `sensor` and `where`. The tier (response header X-Tier) is the finest whose
        buckets are at least `interval_ms`, at most 2,000 buckets per sensor."""
        now = now_ms()
        start = parameter("from", lambda: parse_time_ms(from_, now))
        end = parameter("to", lambda: parse_time_ms(to, now))
        chosen = selected_sensors(stores, registry, selector(where))
        ids = sorted(s for s in chosen if fnmatch.fnmatchcase(s, sensor))[:limit]
        if not ids:
            return []
        tier, points = series(stores, ids, metric, stat, start, end, interval_ms)
        response.headers["X-Tier"] = tier.name
        return points

    return router
