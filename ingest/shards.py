"""Readings spread over several streams by sensor id, so that each stream (and every key of it)
can live on its own Redis Cluster node.

With one shard on a plain Redis the stream is `app:event`, as it always was. With N shards, or
on a Redis Cluster, shard i is the stream `app:event:{i}`: the braces are a cluster hash tag,
and since every key of a stream starts with the stream's name (ingest/keys.py), each shard's
keys, the alerts stream `app:alerts:{i}` and its keys included, share one slot, so each batch's
script runs on one node. A stream name that already holds a hash tag is used as it is.

A sensor's shard is `crc32(sensor_id as UTF-8) mod N` (zlib's CRC-32, as in gzip and PNG): the
same in every producer and in any language, and printed by `telemetry shard-of SENSOR`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ingest.settings import Settings


def shard_of(sensor_id: str, shards: int) -> int:
    """The shard, 0 to shards - 1, a sensor's readings go to."""
    if shards == 1:
        return 0
    return zlib.crc32(sensor_id.encode("utf-8", "surrogateescape")) % shards


def has_hash_tag(name: str) -> bool:
    """Whether Redis Cluster hashes `name` by a `{tag}` inside it rather than the whole name."""
    start = name.find("{")
    return start >= 0 and name.find("}", start + 2) > start


@dataclass(frozen=True)
class Shard:
    index: int
    # The settings of this shard alone: its stream and alerts stream named, one shard.
    settings: Settings

    @property
    def stream(self) -> str:
        return self.settings.stream


def is_sharded(settings: Settings) -> bool:
    """Whether the streams carry shard hash tags (several shards, or a Redis Cluster)."""
    return not has_hash_tag(settings.stream) and (
        settings.shard_count > 1 or settings.redis_cluster
    )


def shards(settings: Settings) -> list[Shard]:
    """Every shard, in order."""
    if not is_sharded(settings):
        return [Shard(0, settings)]
    return [Shard(i, _shard_settings(settings, i)) for i in range(settings.shard_count)]


def _shard_settings(settings: Settings, index: int) -> Settings:
    tag = f"{{{index}}}"
    stream, alerts_stream = f"{settings.stream}:{tag}", f"{settings.alerts_stream}:{tag}"
    return settings.replace(stream=stream, alerts_stream=alerts_stream, shard_count=1)


def shard_for(settings: Settings, sensor_id: str) -> Shard:
    """The shard a sensor's readings, aggregates and alerts live in."""
    every = shards(settings)
    return every[shard_of(sensor_id, len(every))]


def parse_shard_list(text: str, shard_count: int) -> list[int]:
    """`0,2` or `0-3` (or both, `0-1,5`): the shards a worker serves."""
    shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}..."
    chosen: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise ValueError(f"expected shard numbers such as 0,2 or 0-3, got {shown}") from None
        if not 0 <= low <= high < shard_count:
            raise ValueError(f"shards are numbered 0 to {shard_count - 1}, got {shown}")
        chosen.update(range(low, high + 1))
    return sorted(chosen)
