"""Stored buckets read many at a time: some sensors' buckets of one tier, from the chunk hashes
and the packed chunks, as a `Buckets` table. A day of one-minute buckets is 1,440 of them;
unpacking them one by one would cost more than reading them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from analytics.buckets import Buckets
from analytics.errors import AnalyticsError
from analytics.packed import unpack_many
from analytics.stats import RECORD_FORMAT
from analytics.summary import SUMMARY
from analytics.tiers import Tier
from ingest.contract.columns import Ints
from ingest.keys import StreamKeys
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import LuaScript

READ_CHUNKS = LuaScript(
    "analytics", "read_chunks.lua", library="merge.lua", prelude=SUMMARY.lua_source()
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
) -> Buckets:
    """Every bucket of the sensors that overlaps [from_ms, to_ms), in order of start and then
    sensor (`sensor` is a place in `sensor_ids`). A coarse tier's buckets include the fine
    buckets not rolled up yet (see `rollup`), read in one transaction with the mark that says
    which those are."""
    first = tier.bucket_of(from_ms)
    end = max(first, tier.bucket_of(to_ms - 1) + tier.bucket_ms)
    reads = [_Reads(keys, tier, metric, sensor_ids, first, end)]
    guess = read_mark(client, keys) if tier != finest else None
    if guess is not None and guess.bucket < end:
        reads.append(_Reads(keys, finest, metric, sensor_ids, max(guess.bucket, first), end))
    with redis_errors():
        try:
            replies = _read(client, keys, reads, sensor_ids)
        except redis.exceptions.NoScriptError:
            READ_CHUNKS.load(client)
            replies = _read(client, keys, reads, sensor_ids)
    stored = reads[0].found(replies[0])
    if len(reads) == 1:
        return stored.merged()
    fine = reads[1].found(replies[1])
    # Nothing waits when the mark is gone (the aggregates were deleted meanwhile).
    mark = parse_mark(replies[-2]) or Mark(end, 0, end)
    numbers = np.array([-1 if n is None else int(n) for n in replies[-1]], np.int64)
    waiting = np.flatnonzero(~mark.rolled_up(fine.start, numbers[fine.sensor]))
    fine = fine.taken(waiting)
    coarse_of_fine = replace(fine, start=tier.bucket_of(fine.start))
    return Buckets.joined([stored, coarse_of_fine]).merged()


def _read(
    client: redis.Redis, keys: StreamKeys, reads: list[_Reads], sensor_ids: Sequence[str]
) -> list[Any]:
    """The reads' replies, and with a read of the fine tier the roll-up mark and the sensors'
    numbers, in one transaction."""
    pipe = client.pipeline(transaction=len(reads) > 1)
    for read in reads:
        READ_CHUNKS.queue(pipe, *read.arguments())
    if len(reads) > 1:
        pipe.hmget(keys.rollup_mark, MARK_FIELDS)
        pipe.hmget(keys.sensor_index, list(sensor_ids))
    return pipe.execute()


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
    """One read_chunks.lua call for some sensors' buckets of one tier from `first` to `end`
    (ms): each chunk's records and packed blobs."""

    def __init__(
        self,
        keys: StreamKeys,
        tier: Tier,
        metric: str,
        sensor_ids: Sequence[str],
        first: int,
        end: int,
    ) -> None:
        self.tier = tier
        self.first, self.end = first, end
        self.chunks = [
            (
                chunk,
                keys.aggregate_chunk(tier.name, metric, chunk),
                keys.packed_chunk(tier.name, metric, chunk),
                np.arange(max(first, chunk), min(end, chunk + tier.chunk_ms), tier.bucket_ms),
            )
            for chunk in range(tier.chunk_of(first), end, tier.chunk_ms)
        ]
        self.sensor_ids = sensor_ids

    def arguments(self) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of read_chunks.lua."""
        keys = [key for _, loose, packed, _ in self.chunks for key in (loose, packed)]
        args: list[str | int] = [len(self.sensor_ids), *self.sensor_ids]
        for _, _, _, starts in self.chunks:
            args += [int(starts[0]) if len(starts) else 0, len(starts), self.tier.bucket_ms]
        return keys, args

    def found(self, replies: list[list[bytes | None]]) -> Buckets:
        """Every bucket found in read_chunks.lua's reply, with its sensor as a place in
        sensor_ids."""
        sensors = len(self.sensor_ids)
        wanted = [starts for *_, starts in self.chunks]
        # A chunk without records answers with none at all.
        with_records = [len(reply) > 0 for reply in replies[0::2]]
        records = list(itertools.chain.from_iterable(replies[0::2]))
        present = np.fromiter((r is not None for r in records), bool, len(records))
        starts = [s for s, found in zip(wanted, with_records, strict=True) if found]
        starts = starts or [np.zeros(0, np.int64)]
        sensor = np.tile(np.arange(sensors), sum(map(len, starts)))
        start = np.repeat(np.concatenate(starts), sensors).astype(np.int64)
        loose = Buckets.from_records(
            sensor[present], start[present], [r for r in records if r is not None]
        )
        blobs, owners, chunks = [], [], []
        for (chunk, *_), reply in zip(self.chunks, replies[1::2], strict=True):
            for place, blob in enumerate(reply):
                if blob is not None:
                    blobs.append(blob)
                    owners.append(place)
                    chunks.append(chunk)
        if not blobs:
            return loose
        packed = unpack_many(blobs, np.array(chunks, np.int64), self.tier.bucket_ms)
        within = np.flatnonzero((packed.start >= self.first) & (packed.start < self.end))
        packed = packed.taken(within)
        packed = replace(packed, sensor=np.array(owners, np.int64)[packed.sensor])
        return Buckets.joined([loose, packed])
