"""Readings made up for the aggregate tests, and the exact answers numpy gives for them."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
import redis

from analytics.sketch import RELATIVE_ERROR, quantiles_of_many
from analytics.stats import SUMMARY, BucketStats
from ingest.keys import StreamKeys
from ingest.writer import StreamWriter

METRICS = ("temp", "humidity")
QS = (0.5, 0.9, 0.95, 0.99)


@dataclass
class Made:
    sensor: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    values: dict[str, npt.NDArray[np.float64]]
    texts: dict[str, list[str]]

    def sensor_id(self, index: int) -> str:
        return f"dev-{index:04d}"

    def take(self, rows: npt.NDArray[np.bool_]) -> Made:
        """The readings where `rows` is True."""
        where = np.flatnonzero(rows).tolist()
        return Made(
            self.sensor[rows], self.ts[rows], self.seq[rows],
            {m: v[rows] for m, v in self.values.items()},
            {m: [t[i] for i in where] for m, t in self.texts.items()},
        )  # fmt: skip


def make_readings(sensors: int, per_sensor: int, burst: int, seed: int) -> Made:
    """Each sensor reads once a second up to now and uploads in bursts, as buffered devices do."""
    rng = np.random.default_rng(seed)
    now = time.time_ns() // 1_000_000
    order = [
        (k, j)
        for start in range(0, per_sensor, burst)
        for k in range(sensors)
        for j in range(start, min(start + burst, per_sensor))
    ]
    sensor = np.array([k for k, _ in order], dtype=np.int64)
    seq = np.array([j for _, j in order], dtype=np.int64)
    ts = now - (per_sensor - seq) * 1000 - sensor % 997
    texts = {
        "temp": [f"{v:.3f}" for v in 20 + 3 * rng.standard_normal(len(order))],
        "humidity": [f"{v:.4f}" for v in rng.uniform(0.05, 0.95, len(order))],
    }
    values = {m: np.array([float(t) for t in texts[m]]) for m in METRICS}
    return Made(sensor, ts, seq, values, texts)


def write(client: redis.Redis, made: Made, stream: str = "app:event") -> None:
    writer = StreamWriter(client, stream, 10**8, batch_size=2000)
    names = [made.sensor_id(k) for k in range(int(made.sensor.max(initial=-1)) + 1)]
    columns = zip(
        made.sensor.tolist(), made.ts.tolist(), made.seq.tolist(),
        made.texts["temp"], made.texts["humidity"], strict=True,
    )  # fmt: skip
    writer.write(
        [
            {"sensor_id": names[k], "ts": str(ts), "seq": str(seq), "temp": t, "humidity": h}
            for k, ts, seq, t, h in columns
        ]
    )


@dataclass
class Expected:
    count: int
    total: float
    minimum: float
    maximum: float
    percentiles: tuple[float, ...]


def expected_buckets(made: Made, metric: str, bucket_ms: int) -> dict[tuple[str, int], Expected]:
    """Per (sensor_id, bucket start): what numpy says about the readings in that bucket."""
    values = made.values[metric]
    bucket = made.ts - made.ts % bucket_ms
    order = np.lexsort((values, bucket, made.sensor))
    s, b, v = made.sensor[order], bucket[order], values[order]
    starts = np.flatnonzero(np.r_[True, (s[1:] != s[:-1]) | (b[1:] != b[:-1])])
    counts = np.diff(np.r_[starts, len(v)])
    sums = np.add.reduceat(v, starts)
    out = {}
    for g, start in enumerate(starts.tolist()):
        n = int(counts[g])
        # Sorted by value within the bucket: numpy's "lower" percentile is an index.
        ranks = [start + int(np.floor(q * (n - 1))) for q in QS]
        out[(made.sensor_id(int(s[start])), int(b[start]))] = Expected(
            n, float(sums[g]), float(v[start]), float(v[start + n - 1]),
            tuple(float(v[r]) for r in ranks),
        )  # fmt: skip
    return out


def stored_buckets(
    url: str, tier: str, metric: str, stream: str = "app:event"
) -> dict[tuple[str, int], BucketStats]:
    """Every bucket the aggregates group stored for a tier and metric, read straight from Redis."""
    raw = redis.Redis.from_url(url)
    prefix = StreamKeys(stream).aggregate_chunk(tier, metric, 0)[: -len("0")]
    out = {}
    for key in raw.scan_iter(match=prefix + "*", count=1000):
        fields = cast(dict[bytes, bytes], raw.hgetall(key))
        for field, record in fields.items():
            sensor_id, _, bucket = field.decode().partition("|")
            out[(sensor_id, int(bucket))] = BucketStats.from_record(record)
    return out


def stored_fleet_buckets(
    url: str, tier: str, metric: str, stream: str = "app:event"
) -> dict[tuple[str, int], BucketStats]:
    """Every sensor's buckets as the fleet buckets of a tier and metric hold them (no
    histograms)."""
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
                out[(names[number], bucket)] = BucketStats.unpack(summary, None)
    return out


def percentiles_of(buckets: list[BucketStats]) -> npt.NDArray[np.float64]:
    """QS of every bucket, a row each, computed all at once as the query side computes them
    for many buckets (one at a time, 200,000 buckets would take most of a minute)."""
    sizes = [len(bucket.bins) for bucket in buckets]
    return quantiles_of_many(
        np.fromiter((key for b in buckets for key in b.bins), np.int64, sum(sizes)),
        np.fromiter((n for b in buckets for n in b.bins.values()), np.int64, sum(sizes)),
        np.repeat(np.arange(len(buckets)), sizes),
        len(buckets),
        QS,
        np.array([bucket.minimum for bucket in buckets]),
        np.array([bucket.maximum for bucket in buckets]),
    )


def assert_buckets_match(url: str, made: Made, tier: str, bucket_ms: int) -> int:
    """Every stored bucket equals numpy's answer, and the fleet buckets hold the same
    statistics; returns how many buckets were compared."""
    for metric in METRICS:
        expected = expected_buckets(made, metric, bucket_ms)
        stored = stored_buckets(url, tier, metric)
        assert stored.keys() == expected.keys(), (metric, len(stored), len(expected))
        fleet = stored_fleet_buckets(url, tier, metric)
        assert fleet.keys() == stored.keys()
        for key, bucket in stored.items():
            assert fleet[key] == dataclasses.replace(bucket, bins={}), key
        estimates = percentiles_of([stored[key] for key in expected])
        for (key, want), estimated in zip(expected.items(), estimates.tolist(), strict=True):
            got = stored[key]
            assert (got.count, got.minimum, got.maximum) == (want.count, want.minimum, want.maximum)
            assert abs(got.total - want.total) <= 1e-9 * abs(want.total) + 1e-12, key
            assert abs(got.mean - want.total / want.count) <= 1e-9 * abs(got.mean) + 1e-12
            for estimate, exact in zip(estimated, want.percentiles, strict=True):
                assert abs(estimate - exact) <= RELATIVE_ERROR * abs(exact) + 1e-9, key
    return len(expected) * len(METRICS)
