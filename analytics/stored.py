"""Stored buckets read many at a time: the records of some sensors' buckets in one tier, taken
from their chunk hashes and unpacked with numpy into a table of summaries and one of histogram
bins. A day of one-minute buckets is 1,440 records; unpacking them one by one would cost more
than reading them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import redis

from analytics.sketch import quantiles_of_many
from analytics.stats import BIN_DTYPE, SUMMARY_DTYPE
from analytics.tiers import Tier
from ingest.columns import Ints
from ingest.errors import redis_errors
from ingest.keys import StreamKeys

SUMMARY_WORDS = SUMMARY_DTYPE.itemsize // 8


@dataclass(frozen=True)
class StoredBuckets:
    """The buckets found, each sensor's in time order: bucket i belongs to sensor `sensor[i]`
    (its place in the sensor ids asked for), starts at `start[i]`, and is stored as
    `records[i]`, its summary `summary[i]`; its histogram is the bins whose `bin_bucket` is
    i (a bin may be listed more than once)."""

    sensor: Ints
    start: Ints
    records: list[bytes]
    summary: npt.NDArray[np.void]
    bin_key: Ints
    bin_count: Ints
    bin_bucket: Ints

    def __len__(self) -> int:
        return len(self.records)

    def quantiles(self, owner: Ints, owners: int, qs: Sequence[float]) -> npt.NDArray[np.float64]:
        """The qs-quantiles of the buckets merged by owner (bucket i belongs to `owner[i]`):
        one row per owner, NaN where it has no bucket."""
        lowest = np.full(owners, np.inf)
        np.minimum.at(lowest, owner, self.summary["lo"])
        highest = np.full(owners, -np.inf)
        np.maximum.at(highest, owner, self.summary["hi"])
        return quantiles_of_many(
            self.bin_key, self.bin_count, owner[self.bin_bucket], owners, qs, lowest, highest
        )


def read_buckets(
    client: redis.Redis,
    keys: StreamKeys,
    tier: Tier,
    sensor_ids: Sequence[str],
    metric: str,
    from_ms: int,
    to_ms: int,
) -> StoredBuckets:
    """Every stored bucket of the sensors that overlaps [from_ms, to_ms)."""
    first = tier.bucket_of(from_ms)
    chunks = [
        (chunk, np.arange(max(first, chunk), min(to_ms, chunk + tier.chunk_ms), tier.bucket_ms))
        for chunk in range(tier.chunk_of(first), to_ms, tier.chunk_ms)
    ]
    # Within a chunk, by start and then by sensor: each sensor's buckets stay in time order.
    with redis_errors():
        pipe = client.pipeline(transaction=False)
        for chunk, starts in chunks:
            pipe.hmget(
                keys.aggregate_chunk(tier.name, metric, chunk),
                [f"{sensor_id}|{start}" for start in starts.tolist() for sensor_id in sensor_ids],
            )
        replies: list[list[bytes | None]] = pipe.execute()
    everything = list(itertools.chain.from_iterable(replies))
    found = np.fromiter((r is not None for r in everything), bool, len(everything))
    records = [r for r in everything if r is not None]
    sensors = len(sensor_ids)
    sensor = np.tile(np.arange(sensors), sum(len(starts) for _, starts in chunks))
    start = np.repeat(np.concatenate([starts for _, starts in chunks] or [np.zeros(0, np.int64)]),
                      sensors)  # fmt: skip
    return _unpacked(sensor[found], start[found].astype(np.int64), records)


def _unpacked(sensor: Ints, start: Ints, records: list[bytes]) -> StoredBuckets:
    """Records (a summary of whole 8-byte words, then 8-byte bins) split into their parts as
    words, without a Python step per record."""
    words = np.frombuffer(b"".join(records), np.uint64)
    lengths = np.fromiter(map(len, records), np.int64, len(records)) // 8
    first_word = np.cumsum(lengths) - lengths
    summary_words = words[(first_word[:, None] + np.arange(SUMMARY_WORDS)).reshape(-1)]
    bins_per_record = lengths - SUMMARY_WORDS
    first_bin = np.cumsum(bins_per_record) - bins_per_record
    bin_bucket = np.repeat(np.arange(len(records)), bins_per_record)
    bin_words = (first_word + SUMMARY_WORDS - first_bin)[bin_bucket] + np.arange(len(bin_bucket))
    bins = words[bin_words].view(BIN_DTYPE)
    return StoredBuckets(
        sensor=sensor,
        start=start,
        records=records,
        summary=summary_words.view(SUMMARY_DTYPE),
        bin_key=bins["key"].astype(np.int64),
        bin_count=bins["count"].astype(np.int64),
        bin_bucket=bin_bucket,
    )
