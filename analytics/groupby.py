"""Questions by label: one metric over a window, per value of a label (`site`), for the sensors a
selector picks (`site=gh-*`).

    groups = group_by(stores, registry, "temp", "site", last_ms=3_600_000)

A group's statistics merge every bucket of its sensors in the window: counts, sums, minimum and
maximum exactly, percentiles from the merged histograms (within the sketch's stated error), never
an average of the sensors' percentiles. Labels come from the device registry; a sensor without
the label falls in the group whose value is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from analytics.query import Stats, Stores, choose_tier, held_range, now_ms
from analytics.stats import BucketStats
from analytics.stored import read_buckets
from ingest.devices import DeviceRegistry
from ingest.labels import Selector
from ingest.redis.connection import as_text
from ingest.redis.errors import redis_errors
from ingest.shards import shard_of

# Sensors read in one go; a fleet is read in slices of this many.
SENSORS_PER_READ = 2000
# Buckets one answer merges at most (sensors times buckets per sensor), which picks the tier:
# the finest whose buckets for the whole window stay within it.
MAX_MERGED_BUCKETS = 200_000


@dataclass(frozen=True)
class Group:
    # The label's value shared by the group (None: sensors without the label); None for every
    # group when nothing is grouped by.
    value: str | None
    sensors: int
    tier: str
    stats: Stats | None


def selected_sensors(stores: Stores, registry: DeviceRegistry,
                     selector: Selector | None) -> dict[str, dict[str, str]]:  # fmt: skip
    """Every sensor the aggregates know that the selector picks, with its labels."""
    labels = registry.labels_of()
    found: dict[str, dict[str, str]] = {}
    for store in stores.every:
        with redis_errors():
            known = cast(list[bytes], store.client.zrange(store.keys.sensors, 0, -1))
        for raw in known:
            sensor_id = as_text(raw)
            mine = labels.get(sensor_id, {})
            if selector is None or selector.matches(mine):
                found[sensor_id] = mine
    return found


def group_by(
    stores: Stores,
    registry: DeviceRegistry,
    metric: str,
    label: str | None,
    last_ms: int,
    *,
    selector: Selector | None = None,
    at_ms: int | None = None,
    tier_name: str | None = None,
) -> list[Group]:
    """The metric's statistics over the `last_ms` before `at_ms` (default now) per value of
    `label` (None: one group of every sensor selected), largest group first."""
    to_ms = now_ms() if at_ms is None else at_ms
    from_ms = to_ms - last_ms
    sensors = selected_sensors(stores, registry, selector)
    members: dict[str | None, list[str]] = {}
    for sensor_id, labels in sensors.items():
        members.setdefault(labels.get(label) if label else None, []).append(sensor_id)
    first = stores.every[0]
    per_sensor = max(1, MAX_MERGED_BUCKETS // max(1, len(sensors)))
    tier = first.tier(tier_name) if tier_name else choose_tier(first.tiers, last_ms, per_sensor)
    start, end = held_range(tier, from_ms, to_ms)
    groups = []
    for value, sensor_ids in members.items():
        merged = _merged(stores, sensor_ids, metric, tier.name, start, end)
        stats = None if merged is None else Stats.of(start, end, merged)
        groups.append(Group(value, len(sensor_ids), tier.name, stats))
    return sorted(groups, key=lambda g: (-g.sensors, g.value is None, g.value or ""))


def _merged(stores: Stores, sensor_ids: Sequence[str], metric: str, tier_name: str,
            start: int, end: int) -> BucketStats | None:  # fmt: skip
    """Every bucket of the sensors in [start, end), merged; None when there is none."""
    by_shard: dict[int, list[str]] = {}
    for sensor_id in sensor_ids:
        by_shard.setdefault(shard_of(sensor_id, len(stores.every)), []).append(sensor_id)
    merged: BucketStats | None = None
    for shard, mine in by_shard.items():
        store = stores.every[shard]
        store.check_format()
        tier = store.tier(tier_name)
        for at in range(0, len(mine), SENSORS_PER_READ):
            chunk = mine[at : at + SENSORS_PER_READ]
            stored = read_buckets(store.client, store.keys, tier, chunk, metric, start, end,
                                  finest=store.tiers[0])  # fmt: skip
            for bucket in stored.stats():
                if merged is None:
                    merged = BucketStats.empty()
                merged.merge(bucket)
    return merged
