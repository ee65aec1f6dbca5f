"""Forgetting sensors: everything kept about them removed, so that a sensor that is gone (or an
id made up by a misbehaving device) stops costing memory and stops counting towards the
aggregates group's sensor limit.

A forgotten sensor's aggregates (every tier), its place in the fleet buckets (zeroed; its number
is not given to another sensor, so the fleet strings keep their width), its seq bookkeeping, and
its alert state and open alerts are removed. A reading it sends later starts it afresh, as a new
sensor; forget a sensor once it has stopped sending.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis

from analytics.summary import SUMMARY
from analytics.tiers import MAX_FUTURE_MS, Tier
from ingest.keys import AlertKeys, StreamKeys
from ingest.redis.connection import as_text
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import LuaScript

FORGET_SLOT = LuaScript("analytics", "forget_slot.lua")
KEYS_PER_CALL = 500


def idle_sensors(client: redis.Redis, keys: StreamKeys, idle_ms: int, now_ms: int) -> list[str]:
    """Sensors whose newest reading is older than `idle_ms`."""
    with redis_errors():
        found = client.zrangebyscore(keys.sensors, "-inf", f"({now_ms - idle_ms}")
    return [as_text(sensor) for sensor in cast(list[bytes | str], found)]


def forget_sensors(
    client: redis.Redis,
    keys: StreamKeys,
    alert_keys: AlertKeys,
    tiers: Sequence[Tier],
    sensor_ids: Sequence[str],
    now_ms: int,
) -> int:
    """Forget each sensor (see module docs); how many were known."""
    held = _HeldKeys(keys, tiers, now_ms)
    with redis_errors():
        heard = [as_text(key) for key in client.scan_iter(match=alert_keys.heard("*"), count=1000)]
        known = 0
        for sensor_id in sensor_ids:
            number = client.hget(keys.sensor_index, sensor_id)
            known += number is not None or bool(client.zscore(keys.sensors, sensor_id))
            metrics = sorted(map(as_text, client.smembers(keys.sensor_metrics(sensor_id))))
            pipe = client.pipeline(transaction=False)
            for tier in tiers:
                for metric in metrics:
                    for chunk, buckets in held.chunks(tier, metric):
                        pipe.hdel(chunk, *[f"{sensor_id}|{bucket}" for bucket in buckets])
                        pipe.hdel(keys.packed_chunk(tier.name, metric, buckets.start), sensor_id)
            pipe.zrem(keys.sensors, sensor_id)
            pipe.delete(keys.sensor_metrics(sensor_id), keys.seq_window(sensor_id))
            pipe.hdel(keys.seq_high, sensor_id)
            pipe.hdel(alert_keys.clock, sensor_id)
            pipe.hdel(alert_keys.state, sensor_id)
            for key in heard:
                pipe.zrem(key, sensor_id)
            pipe.execute()
            open_fields = [f for f, _ in client.hscan_iter(alert_keys.open, f"{sensor_id}|*")]
            if open_fields:
                client.hdel(alert_keys.open, *open_fields)
            if number is not None:
                fleets = [key for tier in tiers for metric in metrics
                          for key in held.fleet_buckets(tier, metric)]  # fmt: skip
                offset = int(number) * SUMMARY.size
                for first in range(0, len(fleets), KEYS_PER_CALL):
                    FORGET_SLOT(client, fleets[first : first + KEYS_PER_CALL],
                                [offset, SUMMARY.size])  # fmt: skip
                # The number stays taken: a tombstone in its place, which no reading names.
                pipe = client.pipeline(transaction=True)
                pipe.lset(keys.sensor_names, int(number), "")
                pipe.hdel(keys.sensor_index, sensor_id)
                pipe.execute()
    return int(known)


class _HeldKeys:
    """The chunk and fleet bucket keys of a tier and metric that can still hold data at
    `now_ms` (older ones have expired), named as the aggregates group names them."""

    def __init__(self, keys: StreamKeys, tiers: Sequence[Tier], now_ms: int) -> None:
        self.keys = keys
        self.spans = {
            tier.name: range(
                tier.bucket_of(now_ms - tier.retention_ms - tier.bucket_ms),
                now_ms + MAX_FUTURE_MS + tier.bucket_ms,
                tier.bucket_ms,
            )
            for tier in tiers
        }

    def chunks(self, tier: Tier, metric: str) -> list[tuple[str, range]]:
        """Each chunk key, with the bucket starts it holds."""
        span = self.spans[tier.name]
        return [
            (self.keys.aggregate_chunk(tier.name, metric, chunk),
             range(chunk, chunk + tier.chunk_ms, tier.bucket_ms))
            for chunk in range(tier.chunk_of(span.start), span.stop, tier.chunk_ms)
        ]  # fmt: skip

    def fleet_buckets(self, tier: Tier, metric: str) -> list[str]:
        return [self.keys.fleet_bucket(tier.name, metric, start) for start in self.spans[tier.name]]
