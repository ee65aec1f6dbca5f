"""The `aggregates` consumer group's handler: readings in, exact bucket statistics out.

Each batch is deduplicated by (sensor_id, seq), pre-aggregated with numpy, and applied by one
Lua script that first checks the batch is still this consumer's, so a reading is counted exactly
once however consumers die, stall or re-send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from analytics.preaggregate import BatchOutcome, preaggregate
from analytics.tiers import Tier
from ingest.errors import redis_errors
from ingest.groups import Batch
from ingest.keys import SETTLED, StreamKeys
from ingest.reading import Reading
from ingest.scripts import LuaScript

log = logging.getLogger(__name__)

GROUP = "aggregates"
APPLY_BATCH = LuaScript("analytics", "apply_batch.lua")
# Readings stamped further ahead of the aggregator's clock than this are counted as too new:
# their buckets would outlive every retention.
MAX_FUTURE_MS = 3_600_000
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


class _Args:
    """KEYS and ARGV for one call of the apply script, keys numbered as they are added."""

    def __init__(self, keys: StreamKeys) -> None:
        self.keys: list[str] = [keys.stream, keys.ledger(GROUP), keys.seq_high, keys.sensors]
        self._index: dict[str, int] = {}
        self.argv: list[Any] = []
        self.new_pairs: set[tuple[str, str]] = set()
        self.with_seq: list[Reading] = []

    def key(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            self.keys.append(name)
            index = self._index[name] = len(self.keys)
        return index

    def section(self, rows: Sequence[Sequence[Any]]) -> None:
        self.argv.append(len(rows))
        for row in rows:
            self.argv.extend(row)


class Aggregator:
    acknowledges = True

    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        tiers: Sequence[Tier],
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.client = client
        self.keys = keys
        self.tiers = tiers
        self.clock_ms = clock_ms
        self.stats = AggregatorStats()
        # (sensor, metric) pairs already in the sensor index: not sent again.
        self._known_pairs: set[tuple[str, str]] = set()

    def __call__(self, batch: Batch[Reading]) -> None:
        readings = [entry.value for entry in batch.entries]
        readings, duplicates = _drop_repeats(readings)
        while True:
            result, with_seq = self._apply(batch, readings, duplicates)
            if result == 1:
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
            repeated = {id(with_seq[i]) for i in result[1]}
            readings = [r for r in readings if id(r) not in repeated]
            duplicates += len(repeated)

    def _apply(
        self, batch: Batch[Reading], readings: list[Reading], duplicates: int
    ) -> tuple[Any, list[Reading]]:
        """The script's answer, and the readings with a seq in the order it numbered them."""
        outcome = preaggregate(readings, self.tiers, self.clock_ms(), MAX_FUTURE_MS)
        args = self._arguments(batch, readings, duplicates, outcome)
        with redis_errors():
            result = APPLY_BATCH(self.client, args.keys, args.argv)
        if result == 1:
            if len(self._known_pairs) > KNOWN_PAIRS_LIMIT:
                self._known_pairs.clear()
            self._known_pairs |= args.new_pairs
        return result, args.with_seq

    def _arguments(
        self,
        batch: Batch[Reading],
        readings: list[Reading],
        duplicates: int,
        outcome: BatchOutcome,
    ) -> _Args:
        args = _Args(self.keys)
        ids = batch.ids
        # Entries arrive in stream order; IDs do not sort as strings ("5-10" < "5-9").
        args.argv += [batch.group, batch.consumer, ids[0], ids[-1]]
        args.section([[entry_id] for entry_id in ids])
        increments = [
            (f"{SETTLED}aggregated", outcome.aggregated),
            (f"{SETTLED}duplicate", duplicates),
            (f"{SETTLED}too_old", outcome.too_old),
            (f"{SETTLED}too_new", outcome.too_new),
        ] + [(f"outside_retention:{tier}", n) for tier, n in outcome.tier_drops.items()]
        args.section(increments)
        args.with_seq = _with_seq(readings)
        args.section(
            [
                [args.key(self.keys.seq_window(r.sensor_id)), r.sensor_id, r.seq]
                for r in args.with_seq
            ]
        )
        newest: dict[str, int] = {}
        for r in readings:
            if r.ts_ms > newest.get(r.sensor_id, -1):
                newest[r.sensor_id] = r.ts_ms
        args.section([[ts, sensor] for sensor, ts in newest.items()])
        args.new_pairs = {(r.sensor_id, m) for r in readings for m in r.metrics}
        args.new_pairs -= self._known_pairs
        args.section(
            [[args.key(self.keys.sensor_metrics(s)), metric] for s, metric in args.new_pairs]
        )
        self._delta_section(args, outcome)
        return args

    def _delta_section(self, args: _Args, outcome: BatchOutcome) -> None:
        """Bucket deltas as a handful of packed arguments rather than several per bucket:
        packing tens of thousands of small arguments would cost more than everything else."""
        key_index: list[int] = []
        fields: list[str] = []
        summaries, bins, offsets = [], [], [np.zeros(1, np.int64)]
        expiring: dict[int, int] = {}
        bins_so_far = 0
        pairs = outcome.pairs
        for deltas in outcome.tiers:
            tier = deltas.tier
            for p, bucket in zip(deltas.pair.tolist(), deltas.bucket.tolist(), strict=True):
                sensor_id, metric = pairs[p]
                chunk = tier.chunk_of(bucket)
                index = args.key(self.keys.aggregate_chunk(tier.name, metric, chunk))
                expiring[index] = tier.chunk_expires_at_ms(chunk)
                key_index.append(index)
                fields.append(f"{sensor_id}|{bucket}")
            summaries.append(deltas.summaries)
            bins.append(deltas.bins)
            offsets.append(deltas.bin_offsets[1:] + bins_so_far)
            bins_so_far += len(deltas.bins)
        args.argv += [
            len(fields),
            np.asarray(key_index, dtype="<i4").tobytes(),
            ",".join(fields),
            b"".join(summaries),
            b"".join(bins),
            np.concatenate(offsets).astype("<i4").tobytes(),
        ]
        args.section([[index, at] for index, at in expiring.items()])


def _with_seq(readings: Sequence[Reading]) -> list[Reading]:
    """Readings that carry a seq, in the order the script records them."""
    return sorted((r for r in readings if r.seq is not None), key=lambda r: (r.sensor_id, r.seq))


def _drop_repeats(readings: list[Reading]) -> tuple[list[Reading], int]:
    """Keep the first of readings that share (sensor_id, seq) within the batch."""
    seen: set[tuple[str, int]] = set()
    kept = []
    for reading in readings:
        if reading.seq is not None:
            identity = (reading.sensor_id, reading.seq)
            if identity in seen:
                continue
            seen.add(identity)
        kept.append(reading)
    return kept, len(readings) - len(kept)
