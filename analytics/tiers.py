"""Window tiers: tumbling buckets of one size, kept for one retention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from ingest.durations import format_duration, parse_tier_spec

# Readings stamped further ahead of the aggregator's clock than this are counted as too new:
# their buckets would outlive every retention.
MAX_FUTURE_MS = 3_600_000
# Buckets per storage chunk (one Redis hash per metric, tier and chunk; once closed, one packed
# blob per sensor in it). Shorter chunks are packed sooner; longer ones pack a little tighter.
CHUNK_BUCKETS = 60
# Fleet questions read at most this many buckets of a tier (a coarser tier otherwise), and a
# chunk is packed only when it ended this many buckets ago: the fleet buckets of a question
# about the last few minutes or hours are all still there.
FLEET_BUCKETS = 16
# Times in ms: one, or an array of them (a batch's readings).
Ms = TypeVar("Ms", int, npt.NDArray[np.int64])


@dataclass(frozen=True)
class Tier:
    name: str
    bucket_ms: int
    retention_ms: int

    @property
    def chunk_ms(self) -> int:
        return self.bucket_ms * CHUNK_BUCKETS

    def bucket_of(self, ts_ms: Ms) -> Ms:
        return ts_ms - ts_ms % self.bucket_ms

    def chunk_of(self, bucket_ms: Ms) -> Ms:
        return bucket_ms - bucket_ms % self.chunk_ms

    def chunk_packable_at_ms(self, chunk_ms: Ms) -> Ms:
        """When a chunk may be packed: FLEET_BUCKETS buckets after it ends."""
        return chunk_ms + self.chunk_ms + FLEET_BUCKETS * self.bucket_ms

    def chunk_expires_at_ms(self, chunk_ms: Ms) -> Ms:
        return chunk_ms + self.chunk_ms + self.retention_ms

    def bucket_expires_at_ms(self, bucket_ms: Ms) -> Ms:
        return bucket_ms + self.bucket_ms + self.retention_ms

    def held(self, from_ms: int, to_ms: int, now_ms: int) -> tuple[int, int]:
        """[from_ms, to_ms) cut to the times this tier can hold buckets for at `now_ms`: none
        older than its retention, none later than readings may be stamped ahead. Empty
        (from == to) when nothing is left."""
        start = max(from_ms, now_ms - self.retention_ms - self.bucket_ms)
        end = min(to_ms, now_ms + MAX_FUTURE_MS + self.bucket_ms)
        return start, max(start, end)


def parse_tiers(text: str) -> tuple[Tier, ...]:
    """`10s:6h,1m:7d,1h:90d` -> tiers, finest first; ValueError says what to fix."""
    return tuple(
        Tier(format_duration(bucket_ms), bucket_ms, retention_ms)
        for bucket_ms, retention_ms in parse_tier_spec(text)
    )
