"""Closed chunks are packed, late readings into them are counted once, and what a sensor-metric
costs in Redis stays within its bound."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from analytics.buckets import Buckets
from analytics.compaction import Compactor
from analytics.fleet import fleet_top
from analytics.footprint import measure
from analytics.query import Stores
from analytics.stats import BIN, BucketStats
from analytics.tiers import parse_tiers
from analytics.worker import aggregator_runner
from ingest.keys import StreamKeys
from ingest.settings import Settings
from simulator.dataset import Made, make_readings, write
from telemetry.web.app import create_app
from tests.aggregates_reference import assert_buckets_match, stored_table
from tests.helpers import drain
from tests.test_cli import telemetry

HOUR_MS = 3_600_000


def joined(*parts: Made) -> Made:
    return Made(
        np.concatenate([p.sensor for p in parts]),
        np.concatenate([p.ts for p in parts]),
        np.concatenate([p.seq for p in parts]),
        {m: np.concatenate([p.values[m] for p in parts]) for m in parts[0].values},
        {m: [t for p in parts for t in p.texts[m]] for m in parts[0].texts},
    )


def test_closed_chunks_are_packed_and_late_readings_into_them_counted_once(
    client: redis.Redis, settings: Settings
) -> None:
    keys = StreamKeys(settings.stream)
    now = time.time_ns() // 1_000_000
    made = make_readings(sensors=40, per_sensor=3000, burst=100, seed=11, now_ms=now)
    write(client, made)
    drain(aggregator_runner(client, settings, "c1"))
    packed_until = {k: int(v) for k, v in client.hgetall(keys.packed_until).items()}
    ten_s = parse_tiers(settings.tiers)[0]
    assert packed_until["10s"] >= made.ts.min() + ten_s.chunk_ms
    assert client.scard(keys.loose_chunks) == 0
    # A packed chunk's records and fine fleet buckets are gone.
    chunk = ten_s.chunk_of(int(made.ts.min())) + ten_s.chunk_ms
    assert client.hlen(keys.packed_chunk("10s", "temp", chunk)) == 40
    assert not client.exists(keys.aggregate_chunk("10s", "temp", chunk))
    assert not client.exists(keys.fleet_bucket("10s", "temp", chunk))

    # Late readings, without seq so that only the store's own care keeps them once, into
    # packed chunks of every tier, and into the buckets around them.
    late = make_readings(sensors=45, per_sensor=600, burst=600, seed=12, now_ms=now - 1_500_000)
    write(client, late, with_seq=False)
    drain(aggregator_runner(client, settings, "c1"))
    assert client.scard(keys.loose_chunks) == 0
    both = joined(made, late)
    assert assert_buckets_match(settings.redis_url, both, "10s", 10_000) > 10_000
    assert_buckets_match(settings.redis_url, both, "1m", 60_000)
    assert_buckets_match(settings.redis_url, both, "1h", HOUR_MS)

    # A fleet question about a packed stretch reads the packed chunks.
    at = int(made.ts.min()) + 20 * 60_000
    top = fleet_top(Stores.from_settings(settings), "temp", "max", 120_000, 5, at_ms=at)
    start = ten_s.bucket_of(at - 120_000)
    within = (both.ts >= start) & (both.ts < ten_s.bucket_of(at - 1) + ten_s.bucket_ms)
    highest: dict[int, float] = {}
    for k, v in zip(
        both.sensor[within].tolist(), both.values["temp"][within].tolist(), strict=True
    ):
        highest[k] = max(v, highest.get(k, -np.inf))
    want = sorted(highest.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert [(r.sensor_id, r.value) for r in top] == [(made.sensor_id(k), v) for k, v in want]
    until = datetime.fromtimestamp(at / 1000, UTC).isoformat()
    with TestClient(create_app(settings)) as api:
        query = {"metric": "temp", "by": "max", "last": "2m", "n": "5", "until": until}
        answer = api.get("/fleet/top", params=query).json()
    assert [(r["sensor_id"], r["value"]) for r in answer] == [(r.sensor_id, r.value) for r in top]


def test_a_record_written_while_a_slice_is_packed_is_kept(
    client: redis.Redis, settings: Settings
) -> None:
    """The packer reads a slice under WATCH: a batch writing into the chunk in the middle
    makes it read the slice again."""
    keys = StreamKeys(settings.stream)
    now = time.time_ns() // 1_000_000
    write(client, make_readings(sensors=3, per_sensor=2000, burst=100, seed=13, now_ms=now))
    drain(aggregator_runner(client, settings, "c1"))
    ten_s = parse_tiers(settings.tiers)[0]
    chunk = ten_s.chunk_of(now - 1900_000) + ten_s.chunk_ms
    assert client.hlen(keys.packed_chunk("10s", "temp", chunk)) == 3
    before = sensor_buckets(settings, "dev-0001", chunk)
    # A late record for a bucket that had none, written the moment the slice is packed.
    loose = keys.aggregate_chunk("10s", "temp", chunk)
    extra = BucketStats((1.0, 5.0, 25.0, 5.0, 5.0, chunk + 5, 5.0, chunk + 5, 5.0), {})
    record = extra.pack_summary() + BIN.pack(1_048_736, 1)
    client.hset(loose, "dev-0001|" + str(chunk), record)
    client.sadd(keys.loose_chunks, loose)

    class Interrupted(Compactor):
        interruptions = 0

        def _merged_blobs(self, *args: Any) -> dict[str, bytes]:
            if not self.interruptions:
                self.interruptions += 1
                redis.Redis.from_url(settings.redis_url).hset(
                    loose, "dev-0001|" + str(chunk), record + BIN.pack(1_048_736, 1)
                )
            return super()._merged_blobs(*args)

    packer = Interrupted(client, keys, parse_tiers(settings.tiers))
    packer.catch_up(now)
    assert packer.interruptions == 1
    assert not client.exists(loose)
    after = sensor_buckets(settings, "dev-0001", chunk)
    first = after.taken(np.flatnonzero(after.start == chunk))
    assert len(after) == len(before) + (0 if (before.start == chunk).any() else 1)
    assert first.stats()[0].bins.get(1_048_736, 0) >= 2


def sensor_buckets(settings: Settings, sensor_id: str, chunk: int) -> Buckets:
    names, table = stored_table(settings.redis_url, "10s", "temp")
    rows = [
        i
        for i, (s, start) in enumerate(names)
        if s == sensor_id and chunk <= start < chunk + 600_000
    ]
    return table.taken(np.array(rows, np.int64))


# Bytes per bucket for readings of noise (a new value drawn each second, worse than sensors
# send), per tier: packed, and as records before packing. A 1h bucket of noise holds a wide
# histogram (measured 124 B packed).
PACKED_BOUND = {"10s": 35, "1m": 50, "1h": 140}
RECORD_BOUND = {"10s": 300, "1m": 600, "1h": 1000}
MIB = 1 << 20


def test_a_day_of_readings_costs_at_most_a_mebibyte_per_sensor_metric_at_full_retention(
    client: redis.Redis, settings: Settings
) -> None:
    """A day of 1 Hz readings through a 10 s tier kept long enough that every reading takes the
    roll-up's path; then each tier's cost per bucket, and a sensor-metric's at the default
    retention. The day ends at the 1h tier's latest chunk boundary that is already packable, so
    every tier's sample is packed whatever the hour the test runs; six more hours up to now are
    its open chunks' records."""
    day = settings.replace(tiers="10s:5d,1m:7d,1h:90d", read_batch=5000)
    tiers = parse_tiers(day.tiers)
    hourly = tiers[-1]
    now = time.time_ns() // 1_000_000
    end = hourly.chunk_of(now - (hourly.chunk_packable_at_ms(0) - hourly.chunk_ms) - HOUR_MS)
    made = make_readings(sensors=3, per_sensor=86_400, burst=3600, seed=14, now_ms=end)
    # Six hours up to now, numbered after the day, fill each tier's open chunk with records.
    recent = make_readings(sensors=3, per_sensor=6 * 3600, burst=3600, seed=16, now_ms=now)
    write(client, joined(made, replace(recent, seq=recent.seq + len(made.seq))))
    drain(aggregator_runner(client, day, "c1"))
    kept = {tier.name: tier.retention_ms for tier in parse_tiers(Settings().tiers)}
    footprint = measure(client, StreamKeys(day.stream), tiers, "temp")
    total = 0.0
    for cost in footprint:
        name = cost.tier.name
        assert cost.packed_buckets > 20 and not cost.packed_estimated, (name, cost)
        assert cost.bytes_per_packed_bucket <= PACKED_BOUND[name], (name, cost)
        assert cost.bytes_per_record <= RECORD_BOUND[name], (name, cost)
        total += cost.at_full_retention(kept[name])
    assert total <= MIB, total


def test_storage_command_reports_each_tier_and_the_fleet(
    client: redis.Redis, settings: Settings
) -> None:
    write(client, make_readings(sensors=5, per_sensor=2400, burst=600, seed=15))
    drain(aggregator_runner(client, settings, "c1"))
    done = telemetry(settings, "storage", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["sensors"] == 5
    rows = {(row["metric"], row["tier"]): row for row in report["tiers"]}
    assert set(rows) == {(m, t) for m in ("temp", "humidity") for t in ("10s", "1m", "1h")}
    assert rows["temp", "10s"]["packed_estimated"] is False
    assert (
        0
        < rows["temp", "10s"]["packed_bytes_per_bucket"]
        < rows["temp", "10s"]["record_bytes_per_bucket"]
    )
    per_sensor = sum(row["per_sensor_metric_at_retention_bytes"] for row in report["tiers"])
    assert report["projected_bytes"] == pytest.approx(5 * per_sensor, rel=1e-4)
    assert "GiB of aggregates" in telemetry(settings, "storage").stdout
