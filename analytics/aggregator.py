"""The `aggregates` consumer group's handler: readings in, exact bucket statistics out.

Each batch is deduplicated by (sensor_id, seq), pre-aggregated with numpy, and applied by one
Lua script that first checks the batch is still this consumer's, so a reading is counted exactly
once however consumers die, stall or re-send.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from analytics.compaction import Compactor
from analytics.preaggregate import BatchOutcome, Flat, preaggregate
from analytics.rollup import Rollup, paced
from analytics.stored import FormatMismatch, RecordFormat
from analytics.summary import SUMMARY
from analytics.tiers import MAX_FUTURE_MS, Tier
from ingest.contract.columns import NO_SEQ, Ints, ReadingColumns
from ingest.errors import IngestError
from ingest.groups import Abort, Batch, PreparingHandler, UpkeepingHandler
from ingest.groups.settlement import SETTLE_LIBRARY, Gate, SettlingArgs
from ingest.keys import SETTLED, StreamKeys
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import LuaScript

log = logging.getLogger(__name__)

GROUP = "aggregates"
APPLY_BATCH = LuaScript(
    "analytics", "apply_batch.lua", library="merge.lua",
    prelude=SETTLE_LIBRARY + SUMMARY.lua_source(),
)  # fmt: skip
# How often the roll-up and packing look for work, and how long packing goes on before the
# roll-up looks again.
UPKEEP_EVERY_S = 1.0
PACKING_BUDGET_S = 0.5
# Bound on the (sensor, metric) pairs one process remembers having put in the sensor index.
KNOWN_PAIRS_LIMIT = 1_000_000


@dataclass
class AggregatorStats:
    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    not_owned: int = 0


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _Args(SettlingArgs):
    """KEYS and ARGV for one call of the apply script, and what the aggregator keeps of them."""

    def __init__(self, keys: StreamKeys, batch: Batch[ReadingColumns]) -> None:
        super().__init__(
            keys, batch, Gate.OWNED,
            [keys.seq_high, keys.sensors, keys.sensor_index, keys.sensor_names,
             keys.rollup_mark, keys.metric_names, keys.packed_until, keys.loose_chunks],
        )  # fmt: skip
        self.new_pairs: set[tuple[str, str]] = set()
        # Rows of the readings that carry a seq, in the order the script numbers them.
        self.seq_rows: Ints = np.zeros(0, np.int64)
        # Each sensor code's place in the sensors section.
        self.sensor_place: Ints = np.zeros(0, np.int64)
        # Key index -> when it expires (ms).
        self.expiring: dict[int, int] = {}
        # Chunk key index -> its tier and its end (ms).
        self.chunks: dict[int, tuple[str, int]] = {}

    def keys_by_time(
        self,
        metric_names: Sequence[str],
        metric: Ints,
        times: Ints,
        name: Callable[[str, int], str],
        expires_at_ms: Callable[[int], int],
    ) -> Ints:
        """The key index of each delta, for keys named by (metric, time), each key set to
        expire."""
        # One integer per (metric, time): times are below 2**42 ms, metric codes few.
        combos, combo = np.unique(times * len(metric_names) + metric, return_inverse=True)
        indexes = []
        times_of, codes = np.divmod(combos, len(metric_names))
        for at, code in zip(times_of.tolist(), codes.tolist(), strict=True):
            index = self.key(name(metric_names[code], at))
            self.expiring[index] = expires_at_ms(at)
            indexes.append(index)
        per_delta: Ints = np.asarray(indexes, np.int64)[combo.reshape(-1)]
        return per_delta

    def section(self, rows: Sequence[Sequence[Any]]) -> None:
        self.argv.append(len(rows))
        for row in rows:
            self.argv.extend(row)


class Aggregator(PreparingHandler[ReadingColumns], UpkeepingHandler):
    acknowledges = True

    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        tiers: Sequence[Tier],
        clock_ms: Callable[[], int] = wall_clock_ms,
        group: str = GROUP,
    ) -> None:
        self.client = client
        self.keys = keys
        self.tiers = tiers
        self.group = group
        self.clock_ms = clock_ms
        self.stats = AggregatorStats()
        self.record_format = RecordFormat()
        # Why this handler gave up, for the command to report.
        self.fatal: FormatMismatch | None = None
        self.rollup = Rollup(client, keys, tiers, record_format=self.record_format)
        self.compactor = Compactor(client, keys, tiers)
        # (sensor, metric) pairs already in the sensor index: not sent again.
        self._known_pairs: set[tuple[str, str]] = set()

    def upkeep(self, stop: threading.Event) -> None:
        """Roll up the fine buckets ready, then pack the closed chunks, every UPKEEP_EVERY_S
        until `stop` is set. Packing takes turns with the roll-up, which readers wait on less
        but which must not wait long."""
        while not stop.wait(UPKEEP_EVERY_S):
            try:
                self.record_format.check(self.client, self.keys)
                self.rollup.paced_catch_up(stop, self.rollup.ready_until_ms(self.group))
                paced(stop, lambda: self.compactor.step(self.clock_ms()), PACKING_BUDGET_S)
            except IngestError as exc:
                log.warning("roll-up and packing paused: %s", exc)

    def drained(self) -> None:
        """Roll up through the newest fine bucket aggregated, so that every tier answers for
        everything the drain processed, and pack the chunks closed by then."""
        with redis_errors():
            newest = self.client.zrevrange(self.keys.sensors, 0, 0, withscores=True)
        if newest:
            until = min(int(newest[0][1]), self.clock_ms() + MAX_FUTURE_MS)
            self.rollup.catch_up(self.tiers[0].bucket_of(until) + self.tiers[0].bucket_ms)
            self.compactor.catch_up(self.clock_ms())

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        self.prepare(batch)()

    def prepare(self, batch: Batch[ReadingColumns]) -> Callable[[], None]:
        """Pre-aggregate the batch and build the apply script's arguments; the returned call
        applies them. Only that call writes, so the group runner can run it while it prepares
        the next batch."""
        try:
            self.record_format.claim(self.client, self.keys)
        except FormatMismatch as exc:
            self.fatal = exc
            raise Abort(str(exc)) from exc
        kept = _first_of_each_seq(batch.entries)
        duplicates = len(batch.entries) - len(kept)
        args = self._arguments_for(batch, kept, duplicates)
        return functools.partial(self._commit, batch, kept, duplicates, args)

    def _arguments_for(self, batch: Batch[ReadingColumns], kept: Ints, duplicates: int) -> _Args:
        readings = batch.entries if duplicates == 0 else batch.entries.take(kept)
        outcome = preaggregate(readings, self.tiers, self.clock_ms(), MAX_FUTURE_MS)
        return self._arguments(batch, readings, duplicates, outcome)

    def _commit(
        self, batch: Batch[ReadingColumns], kept: Ints, duplicates: int, args: _Args
    ) -> None:
        while True:
            result = self._apply(args)
            if result == 1:
                known = set() if len(self._known_pairs) > KNOWN_PAIRS_LIMIT else self._known_pairs
                # A new set rather than an update: `prepare` may be reading the old one.
                self._known_pairs = known | args.new_pairs
                self.stats.batches += 1
                self.stats.readings += len(batch.entries)
                self.stats.duplicates += duplicates
                return
            if result == 0:
                # Another consumer owns these entries now, or a re-sent call already applied
                # them; whatever this consumer still owns comes back through its pending list.
                self.stats.not_owned += 1
                log.info("batch of %d no longer ours; dropped", len(batch.entries))
                return
            # Positions in the seq list of readings counted before: drop them, prepare again.
            repeated = args.seq_rows[np.asarray(result[1], np.int64)]
            kept = np.delete(kept, repeated)
            duplicates += len(repeated)
            args = self._arguments_for(batch, kept, duplicates)

    def _apply(self, args: _Args) -> Any:
        with redis_errors():
            return APPLY_BATCH(self.client, args.keys, args.all_argv)

    def _arguments(
        self,
        batch: Batch[ReadingColumns],
        readings: ReadingColumns,
        duplicates: int,
        outcome: BatchOutcome,
    ) -> _Args:
        args = _Args(self.keys, batch)
        args.ledger(
            [
                (f"{SETTLED}aggregated", outcome.aggregated),
                (f"{SETTLED}duplicate", duplicates),
                (f"{SETTLED}too_old", outcome.too_old),
                (f"{SETTLED}too_new", outcome.too_new),
                *[(f"outside_retention:{tier}", n) for tier, n in outcome.tier_drops.items()],
            ]
        )
        self._seq_section(args, readings)
        self._sensor_section(args, readings)
        args.new_pairs = set(outcome.flat.pairs) - self._known_pairs
        args.section(
            [[args.key(self.keys.sensor_metrics(s)), metric] for s, metric in args.new_pairs]
        )
        self._delta_section(args, outcome)
        return args

    def _seq_section(self, args: _Args, readings: ReadingColumns) -> None:
        """The seqs of each sensor in the batch, ascending, packed as doubles after a row per
        sensor saying how many are its; the script numbers them in the order sent."""
        with_seq = np.flatnonzero(readings.seq != NO_SEQ)
        sensor, seq = readings.sensor[with_seq], readings.seq[with_seq]
        order = np.lexsort((seq, sensor))
        args.seq_rows = with_seq[order]
        sensor = sensor[order]
        bounds = np.flatnonzero(np.r_[True, sensor[1:] != sensor[:-1], True]).tolist()
        rows = []
        for start, end in itertools.pairwise(bounds if len(sensor) else []):
            sensor_id = readings.sensors[int(sensor[start])]
            window = args.key(self.keys.seq_window(sensor_id))
            rows.append([window, sensor_id, end - start])
        args.section(rows)
        args.argv.append(seq[order].astype("<f8").tobytes())

    def _sensor_section(self, args: _Args, readings: ReadingColumns) -> None:
        """Each sensor of the batch with its newest event time."""
        newest = np.full(len(readings.sensors), -1, np.int64)
        np.maximum.at(newest, readings.sensor, readings.ts_ms)
        present = newest >= 0
        args.sensor_place = np.cumsum(present) - 1
        codes = np.flatnonzero(present).tolist()
        args.section(
            [
                [ts, readings.sensors[code]]
                for code, ts in zip(codes, newest[codes].tolist(), strict=True)
            ]
        )

    def _delta_section(self, args: _Args, outcome: BatchOutcome) -> None:
        """Bucket deltas as a handful of packed arguments rather than several per bucket:
        packing tens of thousands of small arguments would cost more than everything else."""
        finest, coarse = self.tiers[0], self.tiers[1:]
        placements: list[Ints] = []
        fields: list[str] = []
        records, offsets = [], [np.zeros(1, np.int64)]
        bytes_so_far = 0
        flat = outcome.flat
        sensors = [sensor for sensor, _ in flat.pairs]
        for deltas in outcome.tiers:
            metric = flat.pair_metric[deltas.pair]
            columns = [
                *self._bucket_keys(args, flat, deltas.tier, metric, deltas.bucket),
                args.sensor_place[flat.pair_sensor[deltas.pair]],
            ]
            if deltas.tier == finest:
                # The coarse buckets each fine bucket rolls up into, for a late reading.
                columns.append(deltas.bucket // finest.bucket_ms)
                for tier in coarse:
                    coarse_bucket = tier.bucket_of(deltas.bucket)
                    columns += self._bucket_keys(args, flat, tier, metric, coarse_bucket)
            else:
                columns.append(np.full(len(deltas), -1, np.int64))
                columns += [np.zeros(len(deltas), np.int64)] * (2 * len(coarse))
            placements.append(np.stack(columns, axis=1))
            fields += map("{}|{}".format, map(sensors.__getitem__, deltas.pair.tolist()),
                          deltas.bucket.tolist())  # fmt: skip
            records.append(deltas.records)
            offsets.append(deltas.offsets[1:] + bytes_so_far)
            bytes_so_far += len(deltas.records)
        args.section([[index, *chunk] for index, chunk in args.chunks.items()])
        width = 4 + 2 * len(coarse)
        placement = np.concatenate(placements) if placements else np.zeros((0, width), np.int64)
        order = np.lexsort((placement[:, 2], placement[:, 1], placement[:, 0]))
        sorted_records, sorted_offsets = _reordered(b"".join(records), _joined(offsets), order)
        args.argv += [
            len(fields),
            len(coarse),
            finest.bucket_ms,
            *[tier.bucket_ms for tier in coarse],
            placement[order].astype("<i4").tobytes(),
            ",".join([fields[i] for i in order.tolist()]),
            sorted_records,
            sorted_offsets.astype("<i4").tobytes(),
        ]
        args.section([[index, at] for index, at in args.expiring.items()])

    def _bucket_keys(
        self, args: _Args, flat: Flat, tier: Tier, metric: Ints, bucket: Ints
    ) -> list[Ints]:
        """The key indexes of each bucket's chunk hash and fleet bucket."""
        names = flat.metric_names
        chunk_name = functools.partial(self.keys.aggregate_chunk, tier.name)
        fleet_name = functools.partial(self.keys.fleet_bucket, tier.name)
        chunk = tier.chunk_of(bucket)
        chunk_key = args.keys_by_time(names, metric, chunk, chunk_name, tier.chunk_expires_at_ms)
        indexes, first = np.unique(chunk_key, return_index=True)
        for index, at in zip(indexes.tolist(), chunk[first].tolist(), strict=True):
            args.chunks[index] = (tier.name, at + tier.chunk_ms)
        return [
            chunk_key,
            args.keys_by_time(names, metric, bucket, fleet_name, tier.bucket_expires_at_ms),
        ]


def _reordered(records: bytes, offsets: Ints, order: Ints) -> tuple[bytes, Ints]:
    """Records (each a whole number of 8-byte words, record i at offsets[i]:offsets[i + 1])
    put in the given order, and their new offsets."""
    words = np.frombuffer(records, np.uint64)
    starts, lengths = offsets[:-1][order] // 8, np.diff(offsets)[order] // 8
    new_offsets = np.zeros(len(order) + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    taken = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return words[taken].tobytes(), new_offsets * 8


def _joined(arrays: list[Ints]) -> Ints:
    return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)


def _first_of_each_seq(readings: ReadingColumns) -> Ints:
    """The rows to count: all but the later readings that repeat a (sensor_id, seq) within the
    batch."""
    with_seq = np.flatnonzero(readings.seq != NO_SEQ)
    sensor, seq = readings.sensor[with_seq], readings.seq[with_seq]
    order = np.lexsort((with_seq, seq, sensor))
    sensor, seq = sensor[order], seq[order]
    repeats = with_seq[order][1:][(sensor[1:] == sensor[:-1]) & (seq[1:] == seq[:-1])]
    return np.setdiff1d(np.arange(len(readings)), repeats)
