"""Forgetting sensors: everything kept about them removed, so that a sensor that is gone (or an
id made up by a misbehaving device) stops costing memory and stops counting towards the
aggregates group's sensor limit.

A forgotten sensor's aggregates (every tier), its place in the fleet buckets (zeroed; its number
is not given to another sensor, so the fleet strings keep their width), its seq bookkeeping, and
its alert state and open alerts are removed. A reading it sends later starts it afresh, as a new
sensor; forget a sensor once it has stopped sending.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import cast

import redis

from analytics.summary import SUMMARY
from analytics.tiers import Tier
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
) -> int:
    """Forget each sensor (see module docs); how many were known."""
    by_name = {tier.name: tier for tier in tiers}
    with redis_errors():
        chunks = list(_scan(client, f"{keys.stream}:agg:*"))
        fleets = list(_scan(client, f"{keys.stream}:fleet:*"))
        heard = list(_scan(client, f"{alert_keys.stream}:heard:*"))
        known = 0
        for sensor_id in sensor_ids:
            number = client.hget(keys.sensor_index, sensor_id)
            known += number is not None or bool(client.zscore(keys.sensors, sensor_id))
            pipe = client.pipeline(transaction=False)
            for chunk in chunks:
                tier_name, _metric, start = chunk.rsplit(":", 3)[-3:]
                tier = by_name.get(tier_name)
                if tier is not None:
                    buckets = range(int(start), int(start) + tier.chunk_ms, tier.bucket_ms)
                    pipe.hdel(chunk, *[f"{sensor_id}|{bucket}" for bucket in buckets])
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


def _scan(client: redis.Redis, pattern: str) -> Iterator[str]:
    for key in client.scan_iter(match=pattern, count=1000):
        yield as_text(key)
