"""The exact answers numpy gives for the readings `simulator.dataset` makes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
import redis

from analytics.sketch import RELATIVE_ERROR, quantiles_of_many
from analytics.stats import BIN_DTYPE, BucketStats
from analytics.summary import SUMMARY
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


def stored_records(
    url: str, tier: str, metric: str, stream: str = "app:event"
) -> dict[tuple[str, int], bytes]:
    """Every bucket record the aggregates group stored for a tier and metric, read straight
    from Redis."""
    raw = redis.Redis.from_url(url)
    prefix = StreamKeys(stream).aggregate_chunk(tier, metric, 0)[: -len("0")]
    out = {}
    for key in raw.scan_iter(match=prefix + "*", count=1000):
        fields = cast(dict[bytes, bytes], raw.hgetall(key))
        for field, record in fields.items():
            sensor_id, _, bucket = field.decode().partition("|")
            out[(sensor_id, int(bucket))] = record
    return out


def stored_buckets(
    url: str, tier: str, metric: str, stream: str = "app:event"
) -> dict[tuple[str, int], BucketStats]:
    """Every bucket the aggregates group stored for a tier and metric."""
    records = stored_records(url, tier, metric, stream)
    return {key: BucketStats.from_record(record) for key, record in records.items()}


def stored_fleet_summaries(
    url: str, tier: str, metric: str, stream: str = "app:event"
) -> dict[tuple[str, int], bytes]:
    """Every sensor's bucket summaries as the fleet buckets of a tier and metric hold them."""
    raw = redis.Redis.from_url(url)
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


def assert_buckets_match(url: str, made: Made, tier: str, bucket_ms: int) -> int:
    """Every stored bucket equals numpy's answer, and the fleet buckets hold the same
    statistics; returns how many buckets were compared."""
    for metric in METRICS:
        want = expected_buckets(made, metric, bucket_ms)
        records = stored_records(url, tier, metric)
        assert records.keys() == set(want.keys), (metric, len(records), len(want.keys))
        fleet = stored_fleet_summaries(url, tier, metric)
        assert fleet.keys() == records.keys()
        in_order = [records[key] for key in want.keys]
        summaries = np.frombuffer(
            b"".join(record[: SUMMARY.size] for record in in_order), SUMMARY.dtype
        )
        same = summaries == np.frombuffer(b"".join(fleet[k] for k in want.keys), SUMMARY.dtype)
        assert same.all(), want.keys[int(np.argmin(same))]
        histograms = [record[SUMMARY.size :] for record in in_order]
        bins = np.frombuffer(b"".join(histograms), BIN_DTYPE)
        estimates = quantiles_of_many(
            bins["key"].astype(np.int64),
            bins["count"].astype(np.int64),
            np.repeat(np.arange(len(in_order)), [len(h) // BIN_DTYPE.itemsize for h in histograms]),
            len(in_order),
            QS,
            summaries["lo"],
            summaries["hi"],
        )
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
