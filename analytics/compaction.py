"""Closed chunks packed (see `packed`): each sensor's records of a chunk become one blob, and the
chunk's fleet buckets are dropped (a fleet question about them reads the blobs).

A tier's mark (`StreamKeys.packed_until`) moves over a chunk once the chunk is closed: rolled
up (its end behind the roll-up mark) and ended FLEET_BUCKETS buckets ago. Moving the mark puts
the chunk's hashes on the loose set; from then on a batch writing into the chunk (a late
reading) leaves its record beside the blobs and puts the hash on the set again
(lua/apply_batch.lua), and readers merge both. Packing takes the hashes on the set a slice of
sensors at a time: each slice reads the sensors' records and blobs under WATCH, and replaces
them with new blobs in one transaction, so a record written meanwhile is never lost (the
transaction fails and the slice is read again). A hash leaves the set only when it is empty.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import redis

from analytics.buckets import Buckets
from analytics.packed import pack, unpack_many
from analytics.rollup import steps_until_done
from analytics.stored import read_mark
from analytics.tiers import Tier
from ingest.keys import StreamKeys
from ingest.redis.connection import as_text, binary_twin
from ingest.redis.errors import redis_errors

log = logging.getLogger(__name__)

# Sensors packed per transaction: about 250 µs of CPU each for a chunk of 60 buckets.
SENSORS_PER_SLICE = 64
# A hash with at most this many records is read whole to find its sensors; a bigger one (a
# chunk just closed) is taken in slices of the sensors' list.
READ_WHOLE = 5_000
# Chunks without data the mark may move over in one step (after a start, or an idle spell).
EMPTY_CHUNKS_AT_ONCE = 200
# Times a slice is tried again when records were written while it was packed.
RETRIES = 5


@dataclass
class _Work:
    """A hash on the loose set being packed: its tier, metric and chunk, and the sensors
    still to pack (None: take the sensors' list from `next_number` on)."""

    key: str
    tier: Tier
    metric: str
    chunk_ms: int
    sensors: list[str] | None
    next_number: int = 0


class Compactor:
    def __init__(self, client: redis.Redis, keys: StreamKeys, tiers: Sequence[Tier]) -> None:
        self.client = binary_twin(client)
        self.keys = keys
        self.tiers = tuple(tiers)
        self._tier_by_name = {tier.name: tier for tier in tiers}
        self._work: _Work | None = None

    def catch_up(self, now_ms: int) -> int:
        """Pack every chunk that is ready at `now_ms`; returns the steps taken."""
        return steps_until_done(lambda: self.step(now_ms))

    def step(self, now_ms: int) -> bool:
        """One slice of packing, or one chunk's mark moved; False when nothing is ready."""
        with redis_errors():
            if self._work is None:
                self._work = self._next_work()
            if self._work is None:
                return self._move_a_mark(now_ms)
            if self._pack_slice(self._work):
                self._finish(self._work)
                self._work = None
        return True

    def _next_work(self) -> _Work | None:
        member = self.client.srandmember(self.keys.loose_chunks)
        if member is None:
            return None
        key = as_text(cast(bytes, member))
        parts = self.keys.aggregate_chunk_parts(key)
        tier = self._tier_by_name.get(parts[0]) if parts else None
        if parts is None or tier is None:
            # A tier no longer configured: its chunks expire on their own.
            self.client.srem(self.keys.loose_chunks, key)
            return None
        _, metric, chunk = parts
        records = int(self.client.hlen(key))
        sensors = None
        if records <= READ_WHOLE:
            fields = self.client.hkeys(key)
            sensors = sorted({as_text(field).partition("|")[0] for field in fields})
        return _Work(key, tier, metric, chunk, sensors)

    def _move_a_mark(self, now_ms: int) -> bool:
        """Move the first tier's mark that can move over its next chunk (or over the chunks
        without data after it); False if none can."""
        rolled_up = read_mark(self.client, self.keys)
        metrics = sorted(map(as_text, self.client.smembers(self.keys.metric_names)))
        for tier in self.tiers:
            found = self.client.hget(self.keys.packed_until, tier.name)
            first = (
                int(found)
                if found is not None
                else tier.chunk_of(now_ms - tier.retention_ms - tier.chunk_ms)
            )
            ready = []
            for chunk in range(first, first + EMPTY_CHUNKS_AT_ONCE * tier.chunk_ms, tier.chunk_ms):
                # Nothing is packed before the roll-up has read it, or written it.
                if tier.chunk_packable_at_ms(chunk) > now_ms or (
                    len(self.tiers) > 1
                    and (rolled_up is None or chunk + tier.chunk_ms > rolled_up.bucket)
                ):
                    break
                ready.append(chunk)
            if ready:
                empty = self._empty_run(tier, ready, metrics)
                self._move_mark(tier, first, max(1, empty), metrics if not empty else [])
                return True
        return False

    def _empty_run(self, tier: Tier, chunks: list[int], metrics: list[str]) -> int:
        """How many of `chunks`, from the first, hold no data."""
        if not metrics:
            return len(chunks)
        pipe = self.client.pipeline(transaction=False)
        for chunk in chunks:
            pipe.exists(*[self.keys.aggregate_chunk(tier.name, m, chunk) for m in metrics])
        return next((i for i, n in enumerate(pipe.execute()) if n), len(chunks))

    def _move_mark(self, tier: Tier, chunk: int, chunks: int, metrics: list[str]) -> None:
        """The mark of `tier` moved from `chunk` over `chunks` chunks, the hashes of `metrics`
        in them put on the loose set and their fleet buckets dropped (unless another worker
        moved it first). An empty chunk moved over that a batch wrote into meanwhile (a late
        reading) keeps its records as they are, read like any others, until a batch writes
        there again."""
        end = chunk + chunks * tier.chunk_ms
        with self.client.pipeline(transaction=True) as pipe:
            try:
                _watch(pipe, self.keys.packed_until)
                found = pipe.hget(self.keys.packed_until, tier.name)
                if found is not None and int(found) != chunk:
                    return
                pipe.multi()
                pipe.hset(self.keys.packed_until, tier.name, end)
                if metrics:
                    pipe.sadd(
                        self.keys.loose_chunks,
                        *[self.keys.aggregate_chunk(tier.name, m, c)
                          for m in metrics for c in range(chunk, end, tier.chunk_ms)],
                    )  # fmt: skip
                    pipe.delete(
                        *[self.keys.fleet_bucket(tier.name, m, s)
                          for m in metrics for s in range(chunk, end, tier.bucket_ms)]
                    )  # fmt: skip
                pipe.execute()
            except redis.WatchError:
                pass

    def _pack_slice(self, work: _Work) -> bool:
        """Pack the next sensors of `work`; True when none is left."""
        if work.sensors is not None:
            sensors = work.sensors[:SENSORS_PER_SLICE]
            work.sensors = work.sensors[SENSORS_PER_SLICE:]
            done = not work.sensors
        else:
            names = self.client.lrange(
                self.keys.sensor_names, work.next_number, work.next_number + SENSORS_PER_SLICE - 1
            )
            work.next_number += SENSORS_PER_SLICE
            sensors = [name for name in map(as_text, names) if name]
            done = len(names) < SENSORS_PER_SLICE
        if sensors:
            self._pack(work, sensors)
        return done

    def _pack(self, work: _Work, sensors: list[str]) -> None:
        tier = work.tier
        starts = range(work.chunk_ms, work.chunk_ms + tier.chunk_ms, tier.bucket_ms)
        fields = [f"{sensor}|{start}" for sensor in sensors for start in starts]
        packed_key = self.keys.packed_chunk(tier.name, work.metric, work.chunk_ms)
        for _ in range(RETRIES):
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    _watch(pipe, work.key, packed_key)
                    records = cast(list[bytes | None], pipe.hmget(work.key, fields))
                    blobs = cast(list[bytes | None], pipe.hmget(packed_key, sensors))
                    found = [i for i, record in enumerate(records) if record is not None]
                    if not found:
                        return
                    new_blobs = self._merged_blobs(work, sensors, starts, found, records, blobs)
                    pipe.multi()
                    pipe.hset(packed_key, items=[x for item in new_blobs.items() for x in item])
                    pipe.pexpireat(packed_key, tier.chunk_expires_at_ms(work.chunk_ms))
                    pipe.hdel(work.key, *[fields[i] for i in found])
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
        log.info("packing %s: records kept arriving; left for later", work.key)

    def _merged_blobs(
        self,
        work: _Work,
        sensors: list[str],
        starts: range,
        found: list[int],
        records: list[bytes | None],
        blobs: list[bytes | None],
    ) -> dict[str, bytes]:
        """Each sensor's records (`found` says which of `records` are there) merged into its
        blob, packed again."""
        index = np.array(found, np.int64)
        loose = Buckets.from_records(
            index // len(starts),
            work.chunk_ms + (index % len(starts)) * work.tier.bucket_ms,
            [records[i] for i in found],  # type: ignore[misc]
        )
        with_records = set((index // len(starts)).tolist())
        owners = [i for i, blob in enumerate(blobs) if blob is not None and i in with_records]
        old = unpack_many(
            [blobs[i] for i in owners],  # type: ignore[misc]
            np.full(len(owners), work.chunk_ms, np.int64),
            work.tier.bucket_ms,
        )
        old = replace(old, sensor=np.array(owners, np.int64)[old.sensor])
        merged = Buckets.joined([old, loose]).merged()
        rows_of: defaultdict[int, list[int]] = defaultdict(list)
        for row, sensor in enumerate(merged.sensor.tolist()):
            rows_of[sensor].append(row)
        return {
            sensors[sensor]: pack(
                merged.taken(np.array(rows, np.int64)), work.chunk_ms, work.tier.bucket_ms
            )
            for sensor, rows in rows_of.items()
        }

    def _finish(self, work: _Work) -> None:
        """Take the hash off the loose set if nothing is left in it."""
        with self.client.pipeline(transaction=True) as pipe:
            try:
                _watch(pipe, work.key)
                if pipe.exists(work.key):
                    return
                pipe.multi()
                pipe.srem(self.keys.loose_chunks, work.key)
                pipe.execute()
            except redis.WatchError:
                pass


def _watch(pipe: redis.client.Pipeline, *keys: str) -> None:
    """WATCH, which redis-py leaves untyped."""
    pipe.watch(*keys)  # type: ignore[no-untyped-call]
