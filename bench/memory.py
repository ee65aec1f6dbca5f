"""What a sensor-metric costs in Redis at full retention, and what a fleet needs.

    python -m bench.memory [--sensors 4]

A day of 1 Hz readings per sensor, with past timestamps, is aggregated through tiers
`10s:1d,1m:7d,1h:90d` (the 10 s tier kept a day so that every reading takes the roll-up's
path, as live readings do); closed chunks are packed as the aggregator packs them. Two kinds of
readings: `noise`, a value drawn afresh each second from N(20, 3) with two decimals (what this
benchmark measured before packing), and `sensor-like`, the simulator's temperature model (a
daily swing and slow noise, two decimals), which is what devices send.

Per tier: bytes per packed bucket, per record (the buckets of open chunks, and a fleet bucket's
72 bytes beside each), and a sensor-metric's cost once each tier holds the default retention
(10 s kept 6 h, 1 min kept 7 days, 1 h kept 90 days). Then the Redis memory for fleets of
1,000, 10,000 and 100,000 sensors of 3 metrics, adding what each sensor costs whatever its
metrics (its seq window, metric set, and entries in the sensor index).
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import redis

from analytics.footprint import TierFootprint, measure
from analytics.tiers import parse_tiers
from analytics.worker import aggregator_runner
from bench.common import print_table, redis_for_bench
from ingest.keys import StreamKeys
from ingest.redis.connection import connect
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from simulator.faults import FaultConfig
from simulator.model import SensorBank

TIERS = "10s:1d,1m:7d,1h:90d"
DAY_S = 86_400
FLEETS = (1_000, 10_000, 100_000)
METRICS_PER_SENSOR = 3


def noise(sensors: int, seconds: int) -> np.ndarray:
    return np.round(np.random.default_rng(2).normal(20, 3, (seconds, sensors)), 2)


def sensor_like(sensors: int, seconds: int) -> np.ndarray:
    model = SensorBank([f"m-{k}" for k in range(sensors)], 1.0, 3, FaultConfig())
    everyone = np.arange(sensors)
    out = np.empty((seconds, sensors))
    for s in range(seconds):
        out[s] = [float(entry["temp"]) for entry in model.step(everyone, 0)]
    return out


def aggregate_a_day(url: str, values: np.ndarray) -> Settings:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    settings = Settings(redis_url=url, read_batch=5000, tiers=TIERS)
    writer = StreamWriter(client, settings.stream, 10**8, batch_size=5000)
    seconds, sensors = values.shape
    now = time.time_ns() // 1_000_000
    texts = [[f"{v:.2f}" for v in row] for row in values.tolist()]
    for s in range(seconds):
        ts = str(now - (seconds - s) * 1000)
        for k in range(sensors):
            writer.add({"sensor_id": f"m-{k}", "ts": ts, "temp": texts[s][k]})
    writer.flush()
    aggregator_runner(connect(settings), settings, "bench").run(threading.Event(), drain=True)
    return settings


def per_sensor_bytes(client: redis.Redis, keys: StreamKeys, sensor_id: str) -> int:
    """What one sensor costs beside its buckets."""
    single = sum(
        int(client.memory_usage(key, samples=0) or 0)
        for key in (keys.seq_window(sensor_id), keys.sensor_metrics(sensor_id))
    )
    # Its entries in the hashes and sorted set shared by all sensors.
    shared = [keys.seq_high, keys.sensor_index, keys.sensors, keys.sensor_names]
    sensors = max(1, int(client.zcard(keys.sensors)))
    return single + sum(int(client.memory_usage(k, samples=0) or 0) for k in shared) // sensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sensors", type=int, default=4)
    args = parser.parse_args()
    kept = {tier.name: tier.retention_ms for tier in parse_tiers(Settings().tiers)}
    tier_rows, fleet_rows = [], []
    with redis_for_bench() as url:
        for kind, make in (("noise", noise), ("sensor-like", sensor_like)):
            settings = aggregate_a_day(url, make(args.sensors, DAY_S))
            client = redis.Redis.from_url(url)
            keys = StreamKeys(settings.stream)
            found = measure(client, keys, parse_tiers(TIERS), "temp")
            total = sum(cost.at_full_retention(kept[cost.tier.name]) for cost in found)
            tier_rows += [_tier_row(kind, cost, kept[cost.tier.name]) for cost in found]
            tier_rows.append((kind, "all", "", "", f"{total / 1024:,.0f} KiB"))
            sensor = per_sensor_bytes(client, keys, "m-0")
            tier_rows.append((kind, "per sensor", "", "", f"{sensor:,} B"))
            for fleet in FLEETS:
                needed = fleet * (METRICS_PER_SENSOR * total + sensor)
                fleet_rows.append(
                    (kind, f"{fleet:,} x {METRICS_PER_SENSOR}", f"{needed / 2**30:,.2f} GiB")
                )
    print_table(
        ["readings", "tier", "packed B/bucket", "record B/bucket", "per sensor-metric, kept"],
        tier_rows,
    )
    print()
    print_table(["readings", "sensors x metrics", "Redis memory for the aggregates"], fleet_rows)


def _tier_row(kind: str, cost: TierFootprint, retention_ms: int) -> tuple[str, ...]:
    estimated = " (estimated)" if cost.packed_estimated else ""
    return (
        kind,
        cost.tier.name,
        f"{cost.bytes_per_packed_bucket:.1f}{estimated}",
        f"{cost.bytes_per_record:.0f} + 72",
        f"{cost.at_full_retention(retention_ms) / 1024:,.0f} KiB",
    )


if __name__ == "__main__":
    main()
