"""Buckets as a table: many sensors' buckets of one tier, each a summary row and the histogram
bins that point at it. Records read from Redis, packed chunks and their merges all meet here, so
that a day of one-minute buckets (1,440 of them) is handled with numpy rather than one Python
step per bucket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analytics.sketch import quantiles_of_many
from analytics.stats import BIN_DTYPE, BucketStats
from analytics.summary import SUMMARY
from ingest.contract.columns import Ints

SUMMARY_WORDS = SUMMARY.size // 8


@dataclass(frozen=True)
class Buckets:
    """Bucket i belongs to sensor `sensor[i]` (a place in some list of sensors the caller
    knows), starts at `start[i]` (ms) and has the summary `summary[i]`; its histogram is the
    bins whose `bin_bucket` is i (a bin key may be listed more than once)."""

    sensor: Ints
    start: Ints
    summary: npt.NDArray[np.void]
    bin_key: Ints
    bin_count: Ints
    bin_bucket: Ints

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def empty(cls) -> Buckets:
        none = np.zeros(0, np.int64)
        return cls(none, none, np.zeros(0, SUMMARY.dtype), none, none, none)

    @classmethod
    def from_records(cls, sensor: Ints, start: Ints, records: Sequence[bytes]) -> Buckets:
        """Stored records (a summary of whole 8-byte words, then 8-byte bins), split into their
        parts without a Python step per record."""
        if not records:
            return cls.empty()
        words = np.frombuffer(b"".join(records), np.uint64)
        lengths = np.fromiter(map(len, records), np.int64, len(records)) // 8
        first_word = np.cumsum(lengths) - lengths
        summary_words = words[(first_word[:, None] + np.arange(SUMMARY_WORDS)).reshape(-1)]
        bins_per_record = lengths - SUMMARY_WORDS
        first_bin = np.cumsum(bins_per_record) - bins_per_record
        bin_bucket = np.repeat(np.arange(len(records)), bins_per_record)
        bin_words = (first_word + SUMMARY_WORDS - first_bin)[bin_bucket] + np.arange(
            len(bin_bucket)
        )
        bins = words[bin_words].view(BIN_DTYPE)
        return cls(
            sensor=np.asarray(sensor, np.int64),
            start=np.asarray(start, np.int64),
            summary=summary_words.view(SUMMARY.dtype).copy(),
            bin_key=bins["key"].astype(np.int64),
            bin_count=bins["count"].astype(np.int64),
            bin_bucket=bin_bucket.astype(np.int64),
        )

    @classmethod
    def joined(cls, parts: Sequence[Buckets]) -> Buckets:
        """The parts' buckets one after another, in the order given."""
        parts = [part for part in parts if len(part)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        sizes = np.array([len(part) for part in parts], np.int64)
        offsets = np.cumsum(sizes) - sizes
        return cls(
            sensor=np.concatenate([p.sensor for p in parts]),
            start=np.concatenate([p.start for p in parts]),
            summary=np.concatenate([p.summary for p in parts]),
            bin_key=np.concatenate([p.bin_key for p in parts]),
            bin_count=np.concatenate([p.bin_count for p in parts]),
            bin_bucket=np.concatenate(
                [p.bin_bucket + off for p, off in zip(parts, offsets.tolist(), strict=True)]
            ),
        )

    def taken(self, rows: Ints) -> Buckets:
        """The buckets at `rows`, in that order (each at most once)."""
        new_place = np.full(len(self), -1, np.int64)
        new_place[rows] = np.arange(len(rows))
        moved = new_place[self.bin_bucket]
        kept = moved >= 0
        return Buckets(
            sensor=self.sensor[rows],
            start=self.start[rows],
            summary=self.summary[rows],
            bin_key=self.bin_key[kept],
            bin_count=self.bin_count[kept],
            bin_bucket=moved[kept],
        )

    def merged(self) -> Buckets:
        """One bucket per (sensor, start), in order of start and then sensor: buckets that
        share both are merged (summaries combined, histograms put end to end)."""
        order = np.lexsort((self.sensor, self.start))
        ordered = self.taken(order)
        sensor, start = ordered.sensor, ordered.start
        new = np.r_[True, (sensor[1:] != sensor[:-1]) | (start[1:] != start[:-1])]
        if new.all():
            return ordered
        heads = np.flatnonzero(new)
        tails = np.r_[heads[1:], len(ordered)]
        summary = ordered.summary[heads].copy()
        # Most buckets appear once; only the others are merged, one by one.
        for place in np.flatnonzero(tails - heads > 1).tolist():
            values = SUMMARY.empty()
            for row in range(int(heads[place]), int(tails[place])):
                values = SUMMARY.merge(values, ordered.summary[row].tolist())
            summary[place] = values
        group = np.cumsum(new) - 1
        return Buckets(
            sensor=sensor[heads],
            start=start[heads],
            summary=summary,
            bin_key=ordered.bin_key,
            bin_count=ordered.bin_count,
            bin_bucket=group[ordered.bin_bucket],
        )

    def with_bins_merged(self) -> Buckets:
        """The same buckets with one bin per key in each histogram, keys ascending."""
        if not len(self.bin_key):
            return self
        # Keys are within +-2**31: one sortable integer per (bucket, key).
        combined = self.bin_bucket * (1 << 33) + (self.bin_key + (1 << 32))
        unique, where = np.unique(combined, return_inverse=True)
        counts = np.bincount(where.reshape(-1), weights=self.bin_count).astype(np.int64)
        bucket, key = np.divmod(unique, 1 << 33)
        return Buckets(
            self.sensor, self.start, self.summary, key - (1 << 32), counts, bucket.astype(np.int64)
        )

    def stats(self) -> list[BucketStats]:
        """Each bucket's statistics."""
        order = np.argsort(self.bin_bucket, kind="stable")
        ends = np.searchsorted(self.bin_bucket[order], np.arange(len(self)), side="right")
        keys, counts = self.bin_key[order].tolist(), self.bin_count[order].tolist()
        found = []
        begin = 0
        for row, end in zip(self.summary.tolist(), ends.tolist(), strict=True):
            bins: dict[int, int] = {}
            for key, count in zip(keys[begin:end], counts[begin:end], strict=True):
                bins[key] = bins.get(key, 0) + count
            found.append(BucketStats(row, bins))
            begin = end
        return found

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
