"""Statistics of one bucket: what is stored, how buckets merge, and what is reported.

Stored per bucket, all mergeable: count, sum, sum of squares, min, max, first and last value with
their event times, and a histogram (see `sketch`). Two buckets merge by adding or by min/max;
"first" is the value with the smallest event time (the smaller value on a tie) and "last" the
value with the largest (the larger value on a tie), so the merge order never matters.

A bucket is stored as one record: its summary packed as nine little-endian doubles, followed by
its histogram as (int32 key, uint32 count) pairs; the Lua script that merges them in Redis reads
the same layout.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from analytics.sketch import quantiles

# The layout of every aggregate record and fleet bucket below. A store records the format it
# holds (see `stored.RecordFormat`); change the layout, and this number changes with it.
RECORD_FORMAT = 1
SUMMARY = struct.Struct("<9d")
BIN = struct.Struct("<iI")
# The same layouts for numpy, to pack and read many buckets at once.
SUMMARY_FIELDS = ["c", "s", "q", "lo", "hi", "fts", "fv", "lts", "lv"]
SUMMARY_DTYPE = np.dtype([(name, "<f8") for name in SUMMARY_FIELDS])
BIN_DTYPE = np.dtype([("key", "<i4"), ("count", "<u4")])
assert SUMMARY_DTYPE.itemsize == SUMMARY.size and BIN_DTYPE.itemsize == BIN.size


def spread(
    count: npt.ArrayLike, total: npt.ArrayLike, total_sq: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Population standard deviation from a bucket's count, sum and sum of squares; for one
    bucket or, element by element, for arrays of them."""
    mean = np.divide(total, count)
    deviation: npt.NDArray[np.float64] = np.sqrt(
        np.maximum(0.0, np.divide(total_sq, count) - mean**2)
    )
    return deviation


@dataclass
class BucketStats:
    count: int
    total: float
    total_sq: float
    minimum: float
    maximum: float
    first_ts_ms: int
    first: float
    last_ts_ms: int
    last: float
    bins: dict[int, int] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> BucketStats:
        """The identity of `merge`."""
        return cls(0, 0.0, 0.0, math.inf, -math.inf, sys.maxsize, math.inf, -1, -math.inf)

    @classmethod
    def from_record(cls, record: bytes) -> BucketStats:
        return cls.unpack(record[: SUMMARY.size], record[SUMMARY.size :])

    @classmethod
    def unpack(cls, summary: bytes, histogram: bytes | None) -> BucketStats:
        """A stored bucket; a histogram may list a bin more than once."""
        c, s, q, lo, hi, fts, fv, lts, lv = SUMMARY.unpack(summary)
        bins: dict[int, int] = {}
        if histogram:
            for key, count in BIN.iter_unpack(histogram):
                bins[key] = bins.get(key, 0) + count
        return cls(int(c), s, q, lo, hi, int(fts), fv, int(lts), lv, bins)

    def merge(self, other: BucketStats) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.first_ts_ms, self.first = min(
            (self.first_ts_ms, self.first), (other.first_ts_ms, other.first)
        )
        self.last_ts_ms, self.last = max(
            (self.last_ts_ms, self.last), (other.last_ts_ms, other.last)
        )
        for key, count in other.bins.items():
            self.bins[key] = self.bins.get(key, 0) + count

    def pack_summary(self) -> bytes:
        """The summary as stored, without the histogram."""
        return SUMMARY.pack(
            self.count, self.total, self.total_sq, self.minimum, self.maximum,
            self.first_ts_ms, self.first, self.last_ts_ms, self.last,
        )  # fmt: skip

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def std(self) -> float:
        """Population standard deviation."""
        return float(spread(self.count, self.total, self.total_sq))

    def percentiles(self, qs: Sequence[float]) -> list[float | None]:
        return quantiles(self.bins, qs, self.minimum, self.maximum)
