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

from analytics.errors import AnalyticsError
from analytics.sketch import quantiles_of_many
from analytics.stats import BIN_DTYPE, RECORD_FORMAT, BucketStats
from analytics.summary import SUMMARY
from analytics.tiers import Tier
from ingest.contract.columns import Ints
from ingest.keys import StreamKeys
from ingest.redis.errors import redis_errors

SUMMARY_WORDS = SUMMARY.size // 8


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


class FormatMismatch(AnalyticsError):
    """The aggregates in Redis are laid out in a format this version does not read."""


class RecordFormat:
    """The format of a store's aggregate records, kept in the stream's meta hash: claimed by the
    first aggregator, checked by every aggregator and reader. A check that passed is not
    repeated."""

    FIELD = "aggregates_format"

    def __init__(self) -> None:
        self._checked = False

    def claim(self, client: redis.Redis, keys: StreamKeys) -> None:
        """For a writer: record this version's format where none is, then check."""
        if self._checked:
            return
        with redis_errors():
            client.hsetnx(keys.meta, self.FIELD, RECORD_FORMAT)
        self.check(client, keys)

    def check(self, client: redis.Redis, keys: StreamKeys) -> None:
        if self._checked:
            return
        with redis_errors():
            found = client.hget(keys.meta, self.FIELD)
        if found is not None and int(found) != RECORD_FORMAT:
            raise FormatMismatch(
                f"the aggregates in Redis are format {int(found)} ({keys.meta} {self.FIELD}); "
                f"this version reads and writes format {RECORD_FORMAT}: aggregate into another "
                "stream name (TELEMETRY_STREAM) or delete the old aggregates"
            )
        self._checked = found is not None


def read_buckets(
    client: redis.Redis,
    keys: StreamKeys,
    tier: Tier,
    sensor_ids: Sequence[str],
    metric: str,
    from_ms: int,
    to_ms: int,
    *,
    finest: Tier,
) -> StoredBuckets:
    """Every bucket of the sensors that overlaps [from_ms, to_ms). A coarse tier's buckets
    include the fine buckets not rolled up into them yet (see `rollup`), read in one
    transaction with the mark that says which those are."""
    first = tier.bucket_of(from_ms)
    end = max(first, tier.bucket_of(to_ms - 1) + tier.bucket_ms)
    reads = [_Reads(keys, tier, metric, sensor_ids, first, end)]
    guess = read_mark(client, keys) if tier != finest else None
    if guess is not None and guess.bucket < end:
        reads.append(_Reads(keys, finest, metric, sensor_ids, max(guess.bucket, first), end))
    with redis_errors():
        pipe = client.pipeline(transaction=len(reads) > 1)
        for read in reads:
            read.queue(pipe)
        if len(reads) > 1:
            pipe.hmget(keys.rollup_mark, MARK_FIELDS)
            pipe.hmget(keys.sensor_index, list(sensor_ids))
        replies = pipe.execute()
    stored = reads[0].found(replies[: reads[0].commands])
    if len(reads) == 1:
        return _unpacked(*stored)
    fine_sensor, fine_start, fine_records = reads[1].found(replies[reads[0].commands : -2])
    # Nothing waits when the mark is gone (the aggregates were deleted meanwhile).
    mark = parse_mark(replies[-2]) or Mark(end, 0, end)
    numbers = np.array([-1 if n is None else int(n) for n in replies[-1]], np.int64)
    waiting = ~mark.rolled_up(fine_start, numbers[fine_sensor])
    chosen = np.flatnonzero(waiting).tolist()
    return _unpacked(
        *_merged(
            np.concatenate([stored[0], fine_sensor[waiting]]),
            np.concatenate([stored[1], tier.bucket_of(fine_start[waiting])]),
            stored[2] + [fine_records[i] for i in chosen],
        )
    )


@dataclass(frozen=True)
class Mark:
    """How far the coarse tiers' roll-up has come (see `rollup`): fine bucket B of sensor
    number N is in the coarse tiers when B < bucket, or B < until and N < sensor."""

    bucket: int
    sensor: int
    until: int

    def rolled_up(self, start: Ints, number: Ints) -> npt.NDArray[np.bool_]:
        rolled: npt.NDArray[np.bool_] = (start < self.bucket) | (
            (start < self.until) & (number < self.sensor)
        )
        return rolled


MARK_FIELDS = ["bucket", "sensor", "until"]


def read_mark(client: redis.Redis, keys: StreamKeys) -> Mark | None:
    """The roll-up mark; None before anything was aggregated."""
    with redis_errors():
        return parse_mark(client.hmget(keys.rollup_mark, MARK_FIELDS))


def parse_mark(reply: Sequence[bytes | str | None]) -> Mark | None:
    bucket, sensor, until = reply
    if bucket is None or sensor is None or until is None:
        return None
    return Mark(int(bucket), int(sensor), int(until))


class _Reads:
    """The HMGETs that fetch some sensors' buckets of one tier from `first` to `end` (ms): in
    each chunk by start and then by sensor, so that each sensor's buckets stay in time
    order."""

    def __init__(
        self,
        keys: StreamKeys,
        tier: Tier,
        metric: str,
        sensor_ids: Sequence[str],
        first: int,
        end: int,
    ) -> None:
        self.fields = [
            (
                keys.aggregate_chunk(tier.name, metric, chunk),
                np.arange(max(first, chunk), min(end, chunk + tier.chunk_ms), tier.bucket_ms),
            )
            for chunk in range(tier.chunk_of(first), end, tier.chunk_ms)
        ]
        self.sensor_ids = sensor_ids
        self.commands = len(self.fields)

    def queue(self, pipe: redis.client.Pipeline) -> None:
        for key, starts in self.fields:
            names = [f"{s}|{start}" for start in starts.tolist() for s in self.sensor_ids]
            pipe.hmget(key, names)

    def found(self, replies: list[list[bytes | None]]) -> tuple[Ints, Ints, list[bytes]]:
        """The sensor (place in sensor_ids), start and record of every bucket found."""
        everything = list(itertools.chain.from_iterable(replies))
        present = np.fromiter((r is not None for r in everything), bool, len(everything))
        sensors = len(self.sensor_ids)
        starts = [starts for _, starts in self.fields] or [np.zeros(0, np.int64)]
        sensor = np.tile(np.arange(sensors), sum(map(len, starts)))
        start = np.repeat(np.concatenate(starts), sensors).astype(np.int64)
        return sensor[present], start[present], [r for r in everything if r is not None]


def _merged(sensor: Ints, start: Ints, records: list[bytes]) -> tuple[Ints, Ints, list[bytes]]:
    """One record per (sensor, start), in order of start and then sensor: records that share
    both are merged (summaries combined, histograms put end to end)."""
    order = np.lexsort((sensor, start))
    sensor, start = sensor[order], start[order]
    ordered = [records[i] for i in order.tolist()]
    new = np.r_[True, (sensor[1:] != sensor[:-1]) | (start[1:] != start[:-1])]
    heads = np.flatnonzero(new)
    tails = np.r_[heads[1:], len(ordered)]
    out = [ordered[head] for head in heads.tolist()]
    # Most buckets have one record; only the others are merged, one by one.
    for place in np.flatnonzero(tails - heads > 1).tolist():
        shared = ordered[int(heads[place]) : int(tails[place])]
        merged = BucketStats.empty()
        for record in shared:
            merged.merge(BucketStats.unpack(record[: SUMMARY.size], None))
        out[place] = merged.pack_summary() + b"".join(r[SUMMARY.size :] for r in shared)
    return sensor[heads], start[heads], out


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
        summary=summary_words.view(SUMMARY.dtype),
        bin_key=bins["key"].astype(np.int64),
        bin_count=bins["count"].astype(np.int64),
        bin_bucket=bin_bucket,
    )
