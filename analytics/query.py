"""The read side: one function per question, each returning plain typed objects.

    from analytics.query import Store, rolling
    store = Store.from_settings(settings)
    window = rolling(store, "sensor1", "temp", last_ms=5 * 60_000)

A rolling window is the merge of the buckets it overlaps; the answer says which span those
buckets actually cover and whether the first or last one reaches outside the window.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import redis

from analytics.sketch import quantiles_of_many
from analytics.stats import BIN_DTYPE, SUMMARY_DTYPE, BucketStats, spread
from analytics.tiers import Tier, parse_tiers
from ingest.connection import connect
from ingest.errors import redis_errors
from ingest.keys import StreamKeys
from ingest.settings import Settings

# Finest tier first, as long as the window needs no more buckets than this.
MAX_BUCKETS = 1440
# A fleet question reads every sensor's buckets: fewer, coarser ones.
FLEET_MAX_BUCKETS = 16
RANKINGS = ("mean", "max", "min", "p50", "p90", "p95", "p99", "count", "last")
# The percentiles every answer reports, as Stats' p50, p90, p95 and p99.
PERCENTILES = (0.5, 0.9, 0.95, 0.99)


class QueryError(ValueError):
    """A question that cannot be answered as asked (unknown tier, window beyond retention)."""


@dataclass(frozen=True)
class Store:
    client: redis.Redis
    keys: StreamKeys
    tiers: tuple[Tier, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(
            connect(settings, decode=False),
            StreamKeys(settings.stream),
            parse_tiers(settings.tiers),
        )

    def tier(self, name: str) -> Tier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        known = ", ".join(t.name for t in self.tiers)
        raise QueryError(f"unknown tier {name!r}; tiers are {known}")


@dataclass(frozen=True)
class Stats:
    """Statistics of one bucket or of a merged window."""

    start_ms: int
    end_ms: int
    count: int
    mean: float
    min: float
    max: float
    std: float
    # Percentiles are within sketch.RELATIVE_ERROR; None where histograms were not read.
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    first: float
    first_ts_ms: int
    last: float
    last_ts_ms: int

    @classmethod
    def of(cls, start_ms: int, end_ms: int, b: BucketStats) -> Stats:
        p50, p90, p95, p99 = b.percentiles(PERCENTILES)
        return cls(
            start_ms, end_ms, b.count, b.mean, b.minimum, b.maximum, b.std, p50, p90, p95, p99,
            b.first, b.first_ts_ms, b.last, b.last_ts_ms,
        )  # fmt: skip


@dataclass(frozen=True)
class Window:
    sensor_id: str
    metric: str
    tier: str
    from_ms: int
    to_ms: int
    # The span of the buckets merged: wider than [from_ms, to_ms) when an edge bucket is partial.
    covered_from_ms: int
    covered_to_ms: int
    partial_first_bucket: bool
    partial_last_bucket: bool
    buckets: int
    stats: Stats | None


@dataclass(frozen=True)
class SensorInfo:
    sensor_id: str
    last_seen_ms: int
    metrics: list[str]


@dataclass(frozen=True)
class Ranked:
    sensor_id: str
    value: float
    window: Window


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def buckets(
    store: Store, sensor_id: str, metric: str, tier_name: str, from_ms: int, to_ms: int
) -> list[Stats]:
    """Every bucket of a tier that overlaps [from_ms, to_ms), oldest first."""
    return [Stats(*row) for row in bucket_rows(store, sensor_id, metric, tier_name, from_ms, to_ms)]


STATS_FIELDS = tuple(f.name for f in fields(Stats))


def bucket_rows(
    store: Store, sensor_id: str, metric: str, tier_name: str, from_ms: int, to_ms: int
) -> list[tuple[Any, ...]]:
    """`buckets` as plain tuples in the order of STATS_FIELDS, computed for all the buckets at
    once: a day of one-minute buckets is 1,440 of them."""
    tier = store.tier(tier_name)
    fetched = [
        (start, summary, bins)
        for _, start, summary, bins in _fetch_packed(
            store, tier, [sensor_id], metric, from_ms, to_ms, with_bins=True
        )
        if summary is not None
    ]
    if not fetched:
        return []
    table = np.frombuffer(b"".join(summary for _, summary, _ in fetched), dtype=SUMMARY_DTYPE)
    histograms = [bins or b"" for _, _, bins in fetched]
    all_bins = np.frombuffer(b"".join(histograms), dtype=BIN_DTYPE)
    sizes = [len(h) // BIN_DTYPE.itemsize for h in histograms]
    percentiles = quantiles_of_many(
        all_bins["key"].astype(np.int64), all_bins["count"].astype(np.int64),
        np.repeat(np.arange(len(fetched)), sizes), len(fetched), PERCENTILES,
        table["lo"], table["hi"],
    )  # fmt: skip
    count = table["c"]
    starts = np.array([start for start, _, _ in fetched], np.int64)
    columns: list[list[Any]] = [
        starts.tolist(), (starts + tier.bucket_ms).tolist(), count.astype(np.int64).tolist(),
        (table["s"] / count).tolist(), table["lo"].tolist(), table["hi"].tolist(),
        spread(count, table["s"], table["q"]).tolist(),
        *[[None if math.isnan(v) else v for v in p] for p in percentiles.T.tolist()],
        table["fv"].tolist(), table["fts"].astype(np.int64).tolist(),
        table["lv"].tolist(), table["lts"].astype(np.int64).tolist(),
    ]  # fmt: skip
    return list(zip(*columns, strict=True))


def rolling(
    store: Store,
    sensor_id: str,
    metric: str,
    last_ms: int,
    *,
    at_ms: int | None = None,
    tier_name: str | None = None,
) -> Window:
    """The statistics of the last `last_ms` before `at_ms` (default now), merged."""
    to_ms = now_ms() if at_ms is None else at_ms
    return window(store, sensor_id, metric, to_ms - last_ms, to_ms, tier_name)


def window(
    store: Store,
    sensor_id: str,
    metric: str,
    from_ms: int,
    to_ms: int,
    tier_name: str | None = None,
) -> Window:
    """The statistics of [from_ms, to_ms), merged from the buckets that overlap it."""
    tier = store.tier(tier_name) if tier_name else choose_tier(store.tiers, to_ms - from_ms)
    fetched = _fetch(store, tier, sensor_id, metric, from_ms, to_ms)
    return _merge_window(sensor_id, metric, tier, from_ms, to_ms, fetched)


def choose_tier(tiers: Sequence[Tier], span_ms: int, max_buckets: int = MAX_BUCKETS) -> Tier:
    """The finest tier that keeps the whole span and needs at most `max_buckets` for it (or, if
    none is that coarse, the coarsest that keeps it)."""
    keeping = [tier for tier in tiers if span_ms <= tier.retention_ms]
    for tier in keeping:
        if span_ms <= tier.bucket_ms * max_buckets:
            return tier
    if keeping:
        return keeping[-1]
    raise QueryError(f"no tier keeps a window of {span_ms} ms")


def fleet_top(
    store: Store, metric: str, by: str, last_ms: int, n: int, *, at_ms: int | None = None
) -> list[Ranked]:
    """The n sensors with the highest `by` (mean, max, p99, ...) over the last `last_ms`.

    Every sensor's bucket summaries are merged with numpy; only the winners' windows are read
    in full. Percentiles need histograms, so for them sensors are visited by falling maximum
    (a percentile never exceeds the maximum) until no sensor left can beat the n-th best.
    """
    if by not in RANKINGS:
        raise QueryError(f"cannot rank by {by!r}; choose one of {', '.join(RANKINGS)}")
    to_ms = now_ms() if at_ms is None else at_ms
    from_ms = to_ms - last_ms
    tier = choose_tier(store.tiers, last_ms, FLEET_MAX_BUCKETS)
    with redis_errors():
        sensors = [
            s.decode() for s in cast(list[bytes], store.client.zrange(store.keys.sensors, 0, -1))
        ]
    merged = _merge_summaries(store, tier, sensors, metric, from_ms, to_ms)
    if merged is None:
        return []
    present, columns = merged
    # A percentile never exceeds the maximum: rank by it until the exact values decide.
    score = columns[by if by in columns else "max"]
    names = np.array(sensors, dtype=object)[present]
    order = sorted(range(len(names)), key=lambda i: (-score[i], names[i]))
    exact = by in columns
    ranked: list[Ranked] = []
    for i in order:
        if len(ranked) >= n and (exact or ranked[n - 1].value >= score[i]):
            break
        found = window(store, names[i], metric, from_ms, to_ms, tier.name)
        value = None if found.stats is None else getattr(found.stats, by)
        if value is not None:
            bisect.insort(
                ranked, Ranked(names[i], value, found), key=lambda r: (-r.value, r.sensor_id)
            )
    return ranked[:n]


def _merge_summaries(
    store: Store, tier: Tier, sensors: Sequence[str], metric: str, from_ms: int, to_ms: int
) -> tuple[npt.NDArray[np.intp], dict[str, npt.NDArray[np.float64]]] | None:
    """The sensors with data in the window (their indexes), and for each of them the merged
    count, mean, min, max and last value."""
    if not sensors:
        return None
    fetched = _fetch_packed(store, tier, sensors, metric, from_ms, to_ms, with_bins=False)
    owners = [s for s, _, summary, _ in fetched if summary is not None]
    if not owners:
        return None
    table = np.frombuffer(
        b"".join(summary for _, _, summary, _ in fetched if summary is not None),
        dtype=SUMMARY_DTYPE,
    )
    owner = np.asarray(owners, dtype=np.intp)
    size = len(sensors)
    count = np.bincount(owner, weights=table["c"], minlength=size)
    total = np.bincount(owner, weights=table["s"], minlength=size)
    lowest = np.full(size, np.inf)
    np.minimum.at(lowest, owner, table["lo"])
    highest = np.full(size, -np.inf)
    np.maximum.at(highest, owner, table["hi"])
    # Sorted by sensor, then time, then value: each sensor's last row holds its last value.
    order = np.lexsort((table["lv"], table["lts"], owner))
    by_sensor = owner[order]
    ends = order[np.flatnonzero(np.r_[by_sensor[1:] != by_sensor[:-1], True])]
    last = np.full(size, np.nan)
    last[owner[ends]] = table["lv"][ends]
    present = np.flatnonzero(count > 0)
    columns = {
        "count": count[present],
        "mean": total[present] / count[present],
        "min": lowest[present],
        "max": highest[present],
        "last": last[present],
    }
    return present, columns


def list_sensors(store: Store) -> list[SensorInfo]:
    """Every sensor seen, with its metrics and the event time of its newest reading."""
    return sensor_page(store)[1]


def sensor_page(
    store: Store, contains: str = "", offset: int = 0, limit: int | None = None
) -> tuple[int, list[SensorInfo]]:
    """Sensors whose id contains `contains`, sorted by id: how many match, and one page."""
    with redis_errors():
        seen = cast(
            list[tuple[bytes, float]],
            store.client.zrange(store.keys.sensors, 0, -1, withscores=True),
        )
    needle = contains.encode()
    matching = sorted((s, score) for s, score in seen if needle in s)
    page = matching[offset : None if limit is None else offset + limit]
    with redis_errors():
        pipe = store.client.pipeline(transaction=False)
        for sensor, _ in page:
            pipe.smembers(store.keys.sensor_metrics(sensor.decode()))
        metric_sets = pipe.execute()
    infos = [
        SensorInfo(sensor.decode(), int(score), sorted(m.decode() for m in metrics))
        for (sensor, score), metrics in zip(page, metric_sets, strict=True)
    ]
    return len(matching), infos


def sensor_info(store: Store, sensor_id: str) -> SensorInfo | None:
    with redis_errors():
        score = store.client.zscore(store.keys.sensors, sensor_id)
        if score is None:
            return None
        metrics = cast(set[bytes], store.client.smembers(store.keys.sensor_metrics(sensor_id)))
    return SensorInfo(sensor_id, int(score), sorted(m.decode() for m in metrics))


def _fetch(
    store: Store, tier: Tier, sensor_id: str, metric: str, from_ms: int, to_ms: int
) -> list[tuple[int, BucketStats]]:
    """One sensor's buckets of a tier overlapping [from_ms, to_ms), oldest first."""
    return [
        (start, BucketStats.unpack(summary, bins))
        for _, start, summary, bins in _fetch_packed(
            store, tier, [sensor_id], metric, from_ms, to_ms, with_bins=True
        )
        if summary is not None
    ]


def _fetch_packed(
    store: Store,
    tier: Tier,
    sensors: Sequence[str],
    metric: str,
    from_ms: int,
    to_ms: int,
    with_bins: bool,
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """(sensor index, bucket start, packed summary, histogram) for every bucket asked for, in
    bucket order; summary None where there is no bucket."""
    if not sensors:
        return []
    by_chunk: dict[int, list[tuple[int, int, bytes]]] = {}
    for start in range(tier.bucket_of(from_ms), to_ms, tier.bucket_ms):
        items = by_chunk.setdefault(tier.chunk_of(start), [])
        items += [
            (s, start, f"{sensor_id}|{start}".encode()) for s, sensor_id in enumerate(sensors)
        ]
    with redis_errors():
        pipe = store.client.pipeline(transaction=False)
        for chunk, items in by_chunk.items():
            fields = [field for _, _, field in items]
            if with_bins:
                fields += [field + b"|h" for _, _, field in items]
            pipe.hmget(store.keys.aggregate_chunk(tier.name, metric, chunk), fields)
        replies: list[list[bytes | None]] = pipe.execute()
    out = []
    for items, values in zip(by_chunk.values(), replies, strict=True):
        for n, (s, start, _) in enumerate(items):
            out.append((s, start, values[n], values[len(items) + n] if with_bins else None))
    return out


def _merge_window(
    sensor_id: str,
    metric: str,
    tier: Tier,
    from_ms: int,
    to_ms: int,
    found: Sequence[tuple[int, BucketStats]],
) -> Window:
    if not found:
        return Window(sensor_id, metric, tier.name, from_ms, to_ms, from_ms, to_ms, False, False,
                      0, None)  # fmt: skip
    merged = BucketStats.empty()
    for _, bucket in found:
        merged.merge(bucket)
    covered_from, covered_to = found[0][0], found[-1][0] + tier.bucket_ms
    return Window(
        sensor_id=sensor_id,
        metric=metric,
        tier=tier.name,
        from_ms=from_ms,
        to_ms=to_ms,
        covered_from_ms=covered_from,
        covered_to_ms=covered_to,
        partial_first_bucket=covered_from < from_ms,
        partial_last_bucket=covered_to > to_ms,
        buckets=len(found),
        stats=Stats.of(covered_from, covered_to, merged),
    )
