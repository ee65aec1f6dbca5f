"""The exact answers numpy gives for the readings `simulator.dataset` makes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import numpy.typing as npt
import redis

from analytics.buckets import Buckets
from analytics.packed import unpack_many
from analytics.sketch import RELATIVE_ERROR
from analytics.stats import BucketStats
from analytics.summary import SUMMARY
from analytics.tiers import CHUNK_BUCKETS
from ingest.durations import parse_duration_ms
from ingest.keys import StreamKeys
from simulator.dataset import METRICS, Made

QS = (0.5, 0.9, 0.95, 0.99)


@dataclass
class Expected:
    """What numpy says about the readings in each bucket: row r is bucket `keys[r]`, a
    (sensor_id, bucket start) pair."""

    keys: list[tuple[str, int]]
    count: npt.NDArray[np.int64]
    total: npt.NDArray[np.float64]
    minimum: npt.NDArray[np.float64]
    maximum: npt.NDArray[np.float64]
    # One column per QS.
    percentiles: npt.NDArray[np.float64]


def expected_buckets(made: Made, metric: str, bucket_ms: int) -> Expected:
    values = made.values[metric]
    bucket = made.ts - made.ts % bucket_ms
    order = np.lexsort((values, bucket, made.sensor))
    s, b, v = made.sensor[order], bucket[order], values[order]
    starts = np.flatnonzero(np.r_[True, (s[1:] != s[:-1]) | (b[1:] != b[:-1])])
    counts = np.diff(np.r_[starts, len(v)])
    # Sorted by value within the bucket: numpy's "lower" percentile is an index.
    ranks = starts[:, None] + np.floor(np.multiply.outer(counts - 1, QS)).astype(np.int64)
    firsts = zip(s[starts].tolist(), b[starts].tolist(), strict=True)
    return Expected(
        [(made.sensor_id(k), t) for k, t in firsts],
        counts, np.add.reduceat(v, starts), v[starts], v[starts + counts - 1], v[ranks],
    )  # fmt: skip


def raw_client(source: str | redis.Redis) -> redis.Redis:
    """A client answering in bytes: to the URL, or `source` itself (to one shard's node)."""
    return redis.Redis.from_url(source) if isinstance(source, str) else source


def stored_table(
    source: str | redis.Redis, tier: str, metric: str, stream: str = "app:event"
) -> tuple[list[tuple[str, int]], Buckets]:
    """Every bucket the aggregates group stored for a tier and metric, read straight from
    Redis (records and packed chunks, merged), and its (sensor_id, start)."""
    raw = raw_client(source)
    keys = StreamKeys(stream)
    names: list[str] = []
    parts = []
    prefix = keys.aggregate_chunk(tier, metric, 0)[: -len("0")]
    for key in raw.scan_iter(match=prefix + "*", count=1000):
        fields = cast(dict[bytes, bytes], raw.hgetall(key))
        owners = []
        for field in fields:
            sensor_id, _, bucket = field.decode().partition("|")
            owners.append((len(names), int(bucket)))
            names.append(sensor_id)
        sensor, start = np.array(owners, np.int64).reshape(-1, 2).T
        parts.append(Buckets.from_records(sensor, start, list(fields.values())))
    prefix = keys.packed_chunk(tier, metric, 0)[: -len("0")]
    for key in raw.scan_iter(match=prefix + "*", count=1000):
        chunk_ms = int(key[len(prefix) :])
        blobs = cast(dict[bytes, bytes], raw.hgetall(key))
        found = unpack_many(
            list(blobs.values()), np.full(len(blobs), chunk_ms), parse_duration_ms(tier)
        )
        parts.append(replace(found, sensor=found.sensor + len(names)))
        names += [sensor_id.decode() for sensor_id in blobs]
    # One number per sensor id, so that merging finds a bucket stored both ways.
    numbers = {name: i for i, name in enumerate(sorted(set(names)))}
    renumber = np.array([numbers[name] for name in names], np.int64)
    joined = Buckets.joined(parts)
    merged = replace(joined, sensor=renumber[joined.sensor] if len(joined) else joined.sensor)
    table = merged.merged()
    ordered = sorted(numbers)
    return [
        (ordered[s], t) for s, t in zip(table.sensor.tolist(), table.start.tolist(), strict=True)
    ], table


def stored_buckets(
    source: str | redis.Redis, tier: str, metric: str, stream: str = "app:event"
) -> dict[tuple[str, int], BucketStats]:
    """Every bucket the aggregates group stored for a tier and metric."""
    names, table = stored_table(source, tier, metric, stream)
    return dict(zip(names, table.stats(), strict=True))


def stored_fleet_summaries(
    source: str | redis.Redis, tier: str, metric: str, stream: str = "app:event"
) -> dict[tuple[str, int], bytes]:
    """Every sensor's bucket summaries as the fleet buckets of a tier and metric hold them."""
    raw = raw_client(source)
    keys = StreamKeys(stream)
    names = [name.decode() for name in cast(list[bytes], raw.lrange(keys.sensor_names, 0, -1))]
    prefix = keys.fleet_bucket(tier, metric, 0)[: -len("0")]
    out = {}
    for key in raw.scan_iter(match=prefix + "*", count=1000):
        bucket = int(key[len(prefix) :])
        packed = cast(bytes, raw.get(key))
        for number, at in enumerate(range(0, len(packed), SUMMARY.size)):
            summary = packed[at : at + SUMMARY.size]
            if summary != bytes(SUMMARY.size):
                out[(names[number], bucket)] = summary
    return out


def assert_buckets_match(
    source: str | redis.Redis, made: Made, tier: str, bucket_ms: int, stream: str = "app:event"
) -> int:
    """Every stored bucket equals numpy's answer, and the fleet buckets hold the same
    statistics; returns how many buckets were compared."""
    for metric in METRICS:
        want = expected_buckets(made, metric, bucket_ms)
        names, table = stored_table(source, tier, metric, stream)
        assert set(names) == set(want.keys), (metric, len(names), len(want.keys))
        row_of = {key: row for row, key in enumerate(names)}
        rows = np.array([row_of[key] for key in want.keys], np.int64)
        summaries = table.summary[rows]
        fleet = stored_fleet_summaries(source, tier, metric, stream)
        # Packed chunks keep their fleet buckets only in the coarsest tier.
        packed_until = raw_client(source).hget(StreamKeys(stream).packed_until, tier)
        chunk_ms = CHUNK_BUCKETS * bucket_ms
        chunk_end = {key: key[1] - key[1] % chunk_ms + chunk_ms for key in names}
        unpacked = {k for k in names if packed_until is None or chunk_end[k] > int(packed_until)}
        assert unpacked <= fleet.keys() <= set(names)
        in_fleet = [k for k in want.keys if k in fleet]
        fleet_rows = np.array([row_of[k] for k in in_fleet], np.int64)
        same = table.summary[fleet_rows] == np.frombuffer(
            b"".join(fleet[k] for k in in_fleet), SUMMARY.dtype
        )
        assert same.all(), in_fleet[int(np.argmin(same))]
        chosen = table.taken(rows)
        estimates = chosen.quantiles(np.arange(len(rows)), len(rows), QS)
        total = summaries["s"]
        checks = {
            "count": summaries["c"] == want.count,
            "min": summaries["lo"] == want.minimum,
            "max": summaries["hi"] == want.maximum,
            "sum": np.abs(total - want.total) <= 1e-9 * np.abs(want.total) + 1e-12,
            "mean": np.abs(total / summaries["c"] - want.total / want.count)
            <= 1e-9 * np.abs(total / summaries["c"]) + 1e-12,
            "percentiles": (
                np.abs(estimates - want.percentiles)
                <= RELATIVE_ERROR * np.abs(want.percentiles) + 1e-9
            ).all(axis=1),
        }
        for name, ok in checks.items():
            assert ok.all(), (metric, name, want.keys[int(np.argmin(ok))])
    return len(want.keys) * len(METRICS)
