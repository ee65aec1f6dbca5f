"""The read side: one function per question, each returning plain typed objects.

    from analytics.query import Store, rolling
    store = Store.from_settings(settings)
    window = rolling(store, "sensor1", "temp", last_ms=5 * 60_000)

A rolling window is the merge of the buckets it overlaps; the answer says which span those
buckets actually cover and whether the first or last one reaches outside the window.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, cast

import numpy as np
import redis

from analytics.errors import QueryError
from analytics.stats import BucketStats
from analytics.stored import RecordFormat, read_buckets
from analytics.summary import REPORTS, SUMMARY, WHOLE_REPORTS
from analytics.tiers import Tier, parse_tiers
from ingest.devices import Device
from ingest.keys import StreamKeys
from ingest.redis.connection import connect
from ingest.redis.errors import redis_errors
from ingest.settings import Settings
from ingest.shards import shard_of, shards

# Finest tier first, as long as the window needs no more buckets than this.
MAX_BUCKETS = 1440
# No answer reads more buckets of one sensor than this (about 3 MiB of records).
MAX_ANSWER_BUCKETS = 20_000
# The percentiles every answer reports, as Stats' p50, p90, p95 and p99.
PERCENTILES = (0.5, 0.9, 0.95, 0.99)
PERCENTILE_FIELDS = ("p50", "p90", "p95", "p99")


@dataclass(frozen=True)
class Store:
    client: redis.Redis
    keys: StreamKeys
    tiers: tuple[Tier, ...]
    record_format: RecordFormat = field(default_factory=RecordFormat, compare=False)

    def check_format(self) -> None:
        self.record_format.check(self.client, self.keys)

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
class Stores:
    """Every shard's store (ingest/shards.py): a sensor's questions go to its shard's store,
    the fleet's to each."""

    every: tuple[Store, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Stores:
        return cls(tuple(Store.from_settings(shard.settings) for shard in shards(settings)))

    def of(self, sensor_id: str) -> Store:
        return self.every[shard_of(sensor_id, len(self.every))]


@dataclass(frozen=True)
class Stats:
    """Statistics of one bucket or of a merged window: the span, every one of
    `summary.REPORTS` and the percentiles."""

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
        reported: dict[str, Any] = b.reports()
        reported.update(zip(PERCENTILE_FIELDS, b.percentiles(PERCENTILES), strict=True))
        return cls(start_ms=start_ms, end_ms=end_ms, **reported)


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
    # From the device registry (ingest.devices): labels, and units by metric.
    labels: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def buckets(
    store: Store, sensor_id: str, metric: str, tier_name: str, from_ms: int, to_ms: int
) -> list[Stats]:
    """Every bucket of a tier that overlaps [from_ms, to_ms), oldest first."""
    return list(map(Stats, *bucket_columns(store, sensor_id, metric, tier_name, from_ms, to_ms)))


STATS_FIELDS = tuple(f.name for f in fields(Stats))


def bucket_columns(
    store: Store, sensor_id: str, metric: str, tier_name: str, from_ms: int, to_ms: int
) -> list[list[Any]]:
    """`buckets` as plain columns, one per field of STATS_FIELDS in its order, computed for all
    the buckets at once: a day of one-minute buckets is 1,440 of them."""
    tier = store.tier(tier_name)
    from_ms, to_ms = held_range(tier, from_ms, to_ms)
    store.check_format()
    stored = read_buckets(
        store.client, store.keys, tier, [sensor_id], metric, from_ms, to_ms, finest=store.tiers[0]
    )
    if not len(stored):
        return [[] for _ in STATS_FIELDS]
    table = stored.summary
    percentiles = stored.quantiles(np.arange(len(stored)), len(stored), PERCENTILES).T
    # None for a bucket without a histogram, as `Stats` reports it.
    reported = percentiles.astype(object)
    reported[np.isnan(percentiles)] = None
    columns = {name: table[name] for name in SUMMARY.names}
    out = {
        name: (
            report(columns).astype(np.int64) if name in WHOLE_REPORTS else report(columns)
        ).tolist()
        for name, report in REPORTS.items()
    }
    out["start_ms"] = stored.start.tolist()
    out["end_ms"] = (stored.start + tier.bucket_ms).tolist()
    out.update(zip(PERCENTILE_FIELDS, reported.tolist(), strict=True))
    return [out[name] for name in STATS_FIELDS]


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
    return windows(store, [sensor_id], metric, from_ms, to_ms, tier_name)[0]


def windows(
    store: Store,
    sensor_ids: Sequence[str],
    metric: str,
    from_ms: int,
    to_ms: int,
    tier_name: str | None = None,
) -> list[Window]:
    """`window` for several sensors, read together."""
    tier = store.tier(tier_name) if tier_name else choose_tier(store.tiers, to_ms - from_ms)
    found: list[list[tuple[int, BucketStats]]] = [[] for _ in sensor_ids]
    start, end = held_range(tier, from_ms, to_ms)
    store.check_format()
    stored = read_buckets(
        store.client, store.keys, tier, sensor_ids, metric, start, end, finest=store.tiers[0]
    )
    for s, start, stats in zip(
        stored.sensor.tolist(), stored.start.tolist(), stored.stats(), strict=True
    ):
        found[s].append((start, stats))
    return [
        _merge_window(sensor_id, metric, tier, from_ms, to_ms, buckets)
        for sensor_id, buckets in zip(sensor_ids, found, strict=True)
    ]


def held_range(tier: Tier, from_ms: int, to_ms: int) -> tuple[int, int]:
    """[from_ms, to_ms) cut to what the tier holds now; QueryError, before anything is read,
    when that still spans more than MAX_ANSWER_BUCKETS buckets."""
    start, end = tier.held(from_ms, to_ms, now_ms())
    buckets = -(-(end - tier.bucket_of(start)) // tier.bucket_ms)
    if buckets > MAX_ANSWER_BUCKETS:
        raise QueryError(
            f"{buckets} buckets of {tier.name} asked for, over the {MAX_ANSWER_BUCKETS} limit: "
            "ask for a shorter range or a coarser tier"
        )
    return start, end


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


def list_sensors(stores: Stores) -> list[SensorInfo]:
    """Every sensor seen, with its metrics and the event time of its newest reading."""
    return sensor_page(stores)[1]


def sensor_page(
    stores: Stores,
    contains: str = "",
    offset: int = 0,
    limit: int | None = None,
    among: Collection[str] | None = None,
) -> tuple[int, list[SensorInfo]]:
    """Sensors whose id contains `contains` (and that are `among` those given), sorted by id:
    how many match, and one page."""
    needle = contains.encode()
    chosen = None if among is None else {sensor.encode() for sensor in among}
    matching: list[tuple[bytes, float, int]] = []
    for shard, store in enumerate(stores.every):
        with redis_errors():
            seen = cast(
                list[tuple[bytes, float]],
                store.client.zrange(store.keys.sensors, 0, -1, withscores=True),
            )
        matching += [(sensor, score, shard) for sensor, score in seen
                     if needle in sensor and (chosen is None or sensor in chosen)]  # fmt: skip
    matching.sort()
    page = matching[offset : None if limit is None else offset + limit]
    metric_sets: dict[bytes, set[bytes]] = {}
    devices: dict[bytes, Device] = {}
    for shard, store in enumerate(stores.every):
        mine = [sensor for sensor, _, of in page if of == shard]
        if not mine:
            continue
        with redis_errors():
            pipe = store.client.pipeline(transaction=False)
            for sensor in mine:
                pipe.smembers(store.keys.sensor_metrics(sensor.decode()))
            pipe.hmget(store.keys.devices, mine)
            *sets, documents = pipe.execute()
        metric_sets.update(zip(mine, sets, strict=True))
        devices.update((sensor, Device.from_json(sensor.decode(), document.decode()))
                       for sensor, document in zip(mine, documents, strict=True)
                       if document is not None)  # fmt: skip
    infos = [
        _info(sensor.decode(), score, metric_sets[sensor], devices.get(sensor))
        for sensor, score, _ in page
    ]
    return len(matching), infos


def _info(sensor_id: str, score: float, metrics: set[bytes], device: Device | None) -> SensorInfo:
    names = sorted(m.decode() for m in metrics)
    if device is None:
        return SensorInfo(sensor_id, int(score), names)
    return SensorInfo(sensor_id, int(score), names, device.labels, device.units)


def sensor_info(store: Store, sensor_id: str) -> SensorInfo | None:
    with redis_errors():
        pipe = store.client.pipeline(transaction=False)
        pipe.zscore(store.keys.sensors, sensor_id)
        pipe.smembers(store.keys.sensor_metrics(sensor_id))
        pipe.hget(store.keys.devices, sensor_id)
        score, metrics, document = pipe.execute()
    if score is None:
        return None
    device = None if document is None else Device.from_json(sensor_id, document.decode())
    return _info(sensor_id, score, metrics, device)


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
