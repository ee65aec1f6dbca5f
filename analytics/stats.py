"""A bucket's stored record, and one bucket's statistics in Python.

A record is its summary (see `summary`: doubles, one per column) followed by its histogram (see
`sketch`) as (int32 key, uint32 count) pairs. Fleet buckets hold summaries only, each sensor's at
its number times the summary's size.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from analytics.sketch import quantiles
from analytics.summary import REPORTS, SUMMARY, WHOLE_REPORTS

# The layout of every aggregate record, packed chunk (whose blobs carry a version of their own,
# `packed.PACK_VERSION`) and fleet bucket, and of the chunks (`tiers.CHUNK_BUCKETS`). A store
# records the format it holds (see `stored.RecordFormat`); change the layout or `SUMMARY`'s
# columns, and this number changes with it (`tests/test_summary.py` holds the two together).
RECORD_FORMAT = 2
BIN = struct.Struct("<iI")
BIN_DTYPE = np.dtype([("key", "<i4"), ("count", "<u4")])
assert BIN_DTYPE.itemsize == BIN.size


class BucketStats:
    """One bucket's (or a merged window's) summary and histogram."""

    def __init__(self, values: Sequence[float], bins: dict[int, int]) -> None:
        self.values = tuple(values)
        self.bins = bins

    @classmethod
    def empty(cls) -> BucketStats:
        """The identity of `merge`."""
        return cls(SUMMARY.empty(), {})

    def merge(self, other: BucketStats) -> None:
        self.values = SUMMARY.merge(self.values, other.values)
        for key, count in other.bins.items():
            self.bins[key] = self.bins.get(key, 0) + count

    def pack_summary(self) -> bytes:
        """The summary as stored, without the histogram."""
        return SUMMARY.struct.pack(*self.values)

    def column(self, name: str) -> float:
        """One of the summary's stored columns."""
        return self.values[SUMMARY.names.index(name)]

    def reports(self) -> dict[str, float | int]:
        """Every one of `summary.REPORTS`."""
        columns = {
            n: np.asarray(v, np.float64) for n, v in zip(SUMMARY.names, self.values, strict=True)
        }
        found: dict[str, float | int] = {}
        for name, report in REPORTS.items():
            value = float(report(columns))
            found[name] = int(value) if name in WHOLE_REPORTS else value
        return found

    def report(self, name: str) -> float | int:
        """One of `summary.REPORTS`."""
        return self.reports()[name]

    @property
    def count(self) -> int:
        return int(self.values[0])

    def percentiles(self, qs: Sequence[float]) -> list[float | None]:
        reported = self.reports()
        return quantiles(self.bins, qs, float(reported["min"]), float(reported["max"]))
