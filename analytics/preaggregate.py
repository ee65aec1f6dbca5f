"""Pre-aggregation of a batch with numpy: one delta per (sensor, metric, tier, bucket).

A consumer turns a batch of readings into the merged statistics of every bucket the batch
touches, so Redis applies one update per bucket instead of one per reading. A coarse tier gets
deltas only for readings past the finest tier's retention: the others reach it by the roll-up
of the finest tier (see `rollup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analytics.sketch import bin_keys
from analytics.stats import BIN_DTYPE
from analytics.summary import SUMMARY, Runs
from analytics.tiers import Tier
from ingest.contract.columns import ReadingColumns


@dataclass(frozen=True)
class TierDeltas:
    """The merged statistics of every bucket of one tier that a batch touches, as arrays and
    packed bytes ready for the apply script: group g is pair `flat.pairs[pair[g]]`, bucket
    `bucket[g]`, its stored form (see `stats`) bytes `offsets[g]..offsets[g+1]` of
    `records`."""

    tier: Tier
    pair: npt.NDArray[np.int64]
    bucket: npt.NDArray[np.int64]
    records: bytes
    offsets: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.pair)

    def record(self, group: int) -> bytes:
        return self.records[self.offsets[group] : self.offsets[group + 1]]


@dataclass
class BatchOutcome:
    flat: Flat
    tiers: list[TierDeltas]
    # Per reading: did it land in at least one tier? Readings that did not are too old or too
    # far in the future and are counted, never merged elsewhere.
    aggregated: int
    too_old: int
    too_new: int
    # Metric values that fell outside one tier's retention but landed in a coarser tier.
    tier_drops: dict[str, int]


class Flat:
    """A batch flattened to one row per metric value, its (sensor, metric) pairs numbered."""

    def __init__(self, readings: ReadingColumns) -> None:
        metrics = len(readings.metric_names)
        pair_keys = readings.sensor[readings.value_row] * metrics + readings.value_metric
        numbered, pair = np.unique(pair_keys, return_inverse=True)
        # Each pair's sensor code (as in `readings.sensor`) and metric, an index into
        # metric_names.
        self.metric_names = readings.metric_names
        self.pair_sensor = numbered // metrics
        self.pair_metric = numbered % metrics
        self.pairs = [
            (readings.sensors[sensor], self.metric_names[metric])
            for sensor, metric in zip(
                self.pair_sensor.tolist(), self.pair_metric.tolist(), strict=True
            )
        ]
        ts = readings.ts_ms[readings.value_row]
        # Rows sorted by pair, then time, then value, once for every tier: a bucket start only
        # grows with time, so each tier's buckets are runs of rows, a run's first row its
        # "first" and its last row its "last" (ties broken by value as the merge in Redis
        # breaks them).
        order = np.lexsort((readings.value, ts, pair))
        self.pair = pair[order].astype(np.int64)
        self.reading = readings.value_row[order]
        self.ts = ts[order]
        self.value = readings.value[order]
        self.keys = bin_keys(self.value)
        self.readings = len(readings)


def preaggregate(
    readings: ReadingColumns, tiers: Sequence[Tier], now_ms: int, max_future_ms: int
) -> BatchOutcome:
    flat = Flat(readings)
    landed = np.zeros(flat.readings, dtype=bool)
    too_new_rows = flat.ts > now_ms + max_future_ms
    deltas: list[TierDeltas] = []
    tier_drops: dict[str, int] = {}
    in_finest: npt.NDArray[np.bool_] | None = None
    for tier in tiers:
        bucket = tier.bucket_of(flat.ts)
        keep = (tier.bucket_expires_at_ms(bucket) > now_ms) & ~too_new_rows
        tier_drops[tier.name] = int((~keep & ~too_new_rows).sum())
        landed[flat.reading[keep]] = True
        direct = keep if in_finest is None else keep & ~in_finest
        if in_finest is None:
            in_finest = keep
        if direct.any():
            deltas.append(_tier_deltas(flat, tier, bucket, direct))
    too_new = np.zeros(flat.readings, dtype=bool)
    too_new[flat.reading[too_new_rows]] = True
    return BatchOutcome(
        flat=flat,
        tiers=deltas,
        aggregated=int(landed.sum()),
        too_old=int((~landed & ~too_new).sum()),
        too_new=int(too_new.sum()),
        tier_drops=tier_drops,
    )


def _tier_deltas(
    flat: Flat, tier: Tier, bucket: npt.NDArray[np.int64], keep: npt.NDArray[np.bool_]
) -> TierDeltas:
    pair, bucket, ts = flat.pair[keep], bucket[keep], flat.ts[keep]
    value, keys = flat.value[keep], flat.keys[keep]
    starts = np.flatnonzero(np.r_[True, (pair[1:] != pair[:-1]) | (bucket[1:] != bucket[:-1])])
    ends = np.r_[starts[1:], len(pair)] - 1
    summary = SUMMARY.of_runs(Runs(ts, value, starts, ends))

    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(pair)]))
    combined, counts = np.unique((group << 24) | (keys + (1 << 23)), return_counts=True)
    bins = np.empty(len(combined), dtype=BIN_DTYPE)
    bins["key"] = (combined & ((1 << 24) - 1)) - (1 << 23)
    bins["count"] = counts
    bin_edges = np.searchsorted(combined >> 24, np.arange(len(starts) + 1))
    records, offsets = _records(summary, bins, bin_edges)
    return TierDeltas(tier, pair[starts], bucket[starts], records, offsets)


def _records(
    summaries: npt.NDArray[np.void], bins: npt.NDArray[np.void], bin_edges: npt.NDArray[np.int64]
) -> tuple[bytes, npt.NDArray[np.int64]]:
    """Each group's summary followed by its histogram (group g's bins are
    `bins[bin_edges[g]:bin_edges[g + 1]]`), end to end, and where each group's record starts
    (and the last ends), in bytes. A summary is whole 8-byte words and a bin one, moved as
    such."""
    words = SUMMARY.size // 8
    bin_counts = np.diff(bin_edges)
    starts = np.r_[0, np.cumsum(words + bin_counts)]
    out = np.empty(starts[-1], np.uint64)
    out[(starts[:-1, None] + np.arange(words)).reshape(-1)] = summaries.view(np.uint64)
    owner = np.repeat(np.arange(len(bin_counts)), bin_counts)
    out[starts[owner] + words + np.arange(len(bins)) - bin_edges[owner]] = bins.view(np.uint64)
    return out.tobytes(), starts * 8
