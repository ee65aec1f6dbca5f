"""One statistic of one metric over time, for many sensors at once, in long form: a row per
(bucket, sensor). What a chart (Grafana's Infinity data source among them) draws: the tier is the
finest whose buckets are at least the chart's interval, so a panel asks for about one point per
pixel and never more than MAX_POINTS per sensor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analytics.errors import QueryError
from analytics.query import PERCENTILE_FIELDS, PERCENTILES, Stores, choose_tier, held_range
from analytics.stored import read_buckets
from analytics.summary import REPORTS, SUMMARY
from analytics.tiers import Tier

MAX_SERIES = 100
MAX_POINTS = 2000
STATISTICS = (*(name for name in REPORTS if not name.endswith("_ts_ms")), *PERCENTILE_FIELDS)


@dataclass(frozen=True)
class Point:
    time: int
    sensor: str
    value: float | None


def series(
    stores: Stores, sensor_ids: Sequence[str], metric: str, statistic: str,
    from_ms: int, to_ms: int, interval_ms: int,
) -> tuple[Tier, list[Point]]:  # fmt: skip
    """The tier chosen and the points of every sensor, by time then sensor."""
    if statistic not in STATISTICS:
        raise QueryError(f"stat must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if len(sensor_ids) > MAX_SERIES:
        raise QueryError(f"{len(sensor_ids)} sensors asked for, over the {MAX_SERIES} limit")
    if from_ms >= to_ms:
        raise QueryError("from must be before to")
    span = to_ms - from_ms
    points_wanted = max(1, min(MAX_POINTS, span // max(1, interval_ms)))
    tiers = stores.every[0].tiers
    tier = choose_tier(tiers, span, points_wanted)
    start, end = held_range(tier, from_ms, to_ms)
    by_store: dict[int, list[str]] = {}
    for sensor_id in sensor_ids:
        by_store.setdefault(stores.every.index(stores.of(sensor_id)), []).append(sensor_id)
    found: list[Point] = []
    for index, ids in by_store.items():
        store = stores.every[index]
        store.check_format()
        stored = read_buckets(store.client, store.keys, tier, ids, metric, start, end,
                              finest=store.tiers[0])  # fmt: skip
        if not len(stored):
            continue
        if statistic in PERCENTILE_FIELDS:
            q = PERCENTILES[PERCENTILE_FIELDS.index(statistic)]
            values = stored.quantiles(np.arange(len(stored)), len(stored), (q,))[:, 0]
        else:
            values = REPORTS[statistic]({name: stored.summary[name] for name in SUMMARY.names})
        found += [
            Point(int(time), ids[sensor], float(value) if math.isfinite(value) else None)
            for time, sensor, value in zip(stored.start.tolist(), stored.sensor.tolist(),
                                           np.asarray(values, np.float64).tolist(), strict=True)
        ]  # fmt: skip
    found.sort(key=lambda p: (p.time, p.sensor))
    return tier, found
