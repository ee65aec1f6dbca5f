"""What the aggregates cost in Redis, measured per tier, and what a sensor-metric will cost once
every tier holds its whole retention: for sizing a node (README, "Sizing") and for `telemetry
storage`.

A tier's buckets are in two forms: packed (closed chunks, see `compaction`), and records (the
chunks still open, and the last FLEET_BUCKETS buckets after them) with a fleet bucket beside
them (a summary per sensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import redis

from analytics.buckets import Buckets
from analytics.packed import HEADER, pack
from analytics.summary import SUMMARY
from analytics.tiers import CHUNK_BUCKETS, FLEET_BUCKETS, Tier
from ingest.keys import StreamKeys
from ingest.redis.connection import as_text, binary_twin
from ingest.redis.errors import redis_errors

# Chunk keys of each kind measured per tier and metric, newest first.
SAMPLE_KEYS = 8
# Sensors of a record chunk packed to estimate what a tier would cost packed, before any of
# its chunks is.
SAMPLE_SENSORS = 200
# What a blob costs in a hash beside its bytes (the entry, the field and the value's headers).
BLOB_OVERHEAD = 64


@dataclass(frozen=True)
class TierFootprint:
    tier: Tier
    packed_buckets: int
    packed_bytes: int
    # True when no chunk of the tier was packed yet and the packed figures come from packing
    # a sample of its records here.
    packed_estimated: bool
    record_buckets: int
    record_bytes: int

    @property
    def bytes_per_packed_bucket(self) -> float:
        return self.packed_bytes / self.packed_buckets if self.packed_buckets else 0.0

    @property
    def bytes_per_record(self) -> float:
        return self.record_bytes / self.record_buckets if self.record_buckets else 0.0

    def at_full_retention(self, retention_ms: int) -> float:
        """Bytes a sensor-metric costs in this tier once it holds `retention_ms`, with the
        most records a tier holds (a whole open chunk and the buckets kept after it)."""
        buckets = retention_ms // self.tier.bucket_ms
        records = min(buckets, CHUNK_BUCKETS + FLEET_BUCKETS)
        return (buckets - records) * self.bytes_per_packed_bucket + records * (
            self.bytes_per_record + SUMMARY.size
        )


def measure(
    client: redis.Redis, keys: StreamKeys, tiers: Sequence[Tier], metric: str
) -> list[TierFootprint]:
    """Each tier's footprint for one metric, from the newest SAMPLE_KEYS chunk keys of each
    kind (MEMORY USAGE of each, every field counted)."""
    binary = binary_twin(client)
    found = []
    with redis_errors():
        for tier in tiers:
            packed = _newest(binary, keys.packed_chunk(tier.name, metric, 0)[:-1])
            packed_bytes, packed_buckets = 0, 0
            for key in packed:
                blobs = cast(list[bytes], binary.hvals(key))
                packed_buckets += sum(HEADER.unpack_from(blob)[2] for blob in blobs)
                packed_bytes += _memory(binary, key)
            records = _newest(binary, keys.aggregate_chunk(tier.name, metric, 0)[:-1])
            record_bytes = sum(_memory(binary, key) for key in records)
            record_buckets = sum(int(binary.hlen(key)) for key in records)
            estimated = not packed and bool(records)
            if estimated:
                parts = keys.aggregate_chunk_parts(records[0])
                assert parts is not None  # found by the aggregate_chunk prefix
                packed_bytes, packed_buckets = _packed_estimate(binary, records[0], parts[2], tier)
            found.append(
                TierFootprint(
                    tier, packed_buckets, packed_bytes, estimated, record_buckets, record_bytes
                )
            )
    return found


def _newest(client: redis.Redis, prefix: str) -> list[str]:
    """The SAMPLE_KEYS keys `prefix` + chunk start with the latest starts."""
    found = [as_text(key) for key in client.scan_iter(match=prefix + "*", count=1000)]
    found = [key for key in found if key[len(prefix) :].isdigit()]
    return sorted(found, key=lambda key: int(key[len(prefix) :]))[-SAMPLE_KEYS:]


def _memory(client: redis.Redis, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def _packed_estimate(client: redis.Redis, key: str, chunk: int, tier: Tier) -> tuple[int, int]:
    """Bytes and buckets of a sample of one record chunk's sensors, packed."""
    fields = [as_text(field) for field in client.hkeys(key)]
    sensors = sorted({field.partition("|")[0] for field in fields})[:SAMPLE_SENSORS]
    sampled = set(sensors)
    chosen = [field for field in fields if field.partition("|")[0] in sampled]
    records = cast(list[bytes], client.hmget(key, chosen))
    place = {sensor: i for i, sensor in enumerate(sensors)}
    sensor = np.array([place[field.partition("|")[0]] for field in chosen], np.int64)
    start = np.array([int(field.partition("|")[2]) for field in chosen], np.int64)
    table = Buckets.from_records(sensor, start, records).merged()
    total = 0
    for i in range(len(sensors)):
        mine = table.taken(np.flatnonzero(table.sensor == i))
        total += len(pack(mine, chunk, tier.bucket_ms)) + BLOB_OVERHEAD
    return total, len(table)
