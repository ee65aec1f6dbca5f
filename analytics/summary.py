"""What a bucket's summary holds, defined once: each stored column with how a run of readings
folds into it and how two buckets' values merge, and each reported statistic as a function of
the columns.

Everything else follows from `SUMMARY`: the layout of records, fleet buckets and packed chunks,
the numpy reduction of a batch (`preaggregate`), the merge in Python (`stats.BucketStats`), the
merge of many buckets at once (fleet questions, `fold`), the merge inside Redis (the Lua
functions from `lua_source`, which the aggregate scripts load before their own code), and the
answers' fields (`REPORTS`). To add a statistic, add a column (and a report if it is answered
directly) and bump `stats.RECORD_FORMAT`; `tests/test_summary.py` adds a toy one and checks
every derived form agrees, the Lua merge included.

A merge never depends on the order: sums add, minima and maxima compare, and a group of columns
marked EARLIEST (LATEST) takes the side whose values, compared in column order, are smaller
(larger). "first" is the value with the smallest event time, the smaller value on a tie.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


class Merge(enum.Enum):
    ADD = "add"
    MIN = "min"
    MAX = "max"
    EARLIEST = "earliest"
    LATEST = "latest"


@dataclass(frozen=True)
class Runs:
    """Readings sorted by bucket, then event time, then value: run r is rows
    `starts[r]..ends[r]` (inclusive) of `ts` and `value`."""

    ts: npt.NDArray[np.int64]
    value: Floats
    starts: npt.NDArray[np.intp]
    ends: npt.NDArray[np.intp]

    @property
    def lengths(self) -> npt.NDArray[np.intp]:
        lengths: npt.NDArray[np.intp] = self.ends - self.starts + 1
        return lengths


@dataclass(frozen=True)
class Column:
    """One stored double of a summary. `group` names the columns an EARLIEST or LATEST merge
    compares together (in column order); `empty` is its value in a bucket with no readings,
    the identity of the merge."""

    name: str
    merge: Merge
    fold: Callable[[Runs], npt.ArrayLike]
    empty: float
    group: str = ""
    # An event time (ms), which lies in its bucket: packed as the offset from the bucket's start.
    time: bool = False


class Summary:
    """A bucket's summary as an ordered set of columns, stored as little-endian doubles."""

    def __init__(self, columns: Sequence[Column]) -> None:
        names = [c.name for c in columns]
        if len(set(names)) != len(names) or not all(re.fullmatch(r"[a-z]\w*", n) for n in names):
            raise ValueError(f"column names must be distinct lower-case identifiers: {names}")
        if columns[0].merge is not Merge.ADD:
            # Readers and the roll-up take a zero first column as "no readings here".
            raise ValueError("the first column must count the readings (merged by ADD)")
        self.columns = tuple(columns)
        self.names = tuple(names)
        self.struct = struct.Struct("<" + "d" * len(columns))
        self.dtype = np.dtype([(name, "<f8") for name in names])
        self.groups: dict[str, list[int]] = {}
        for i, column in enumerate(columns):
            if column.merge in (Merge.EARLIEST, Merge.LATEST):
                self.groups.setdefault(column.group, []).append(i)
        for members in self.groups.values():
            if len({columns[i].merge for i in members}) != 1:
                raise ValueError("a group's columns must all be EARLIEST or all LATEST")

    @property
    def size(self) -> int:
        return self.struct.size

    def empty(self) -> tuple[float, ...]:
        return tuple(c.empty for c in self.columns)

    def of_runs(self, runs: Runs) -> npt.NDArray[np.void]:
        """The summary of every run, as a table of `dtype`."""
        table = np.empty(len(runs.starts), dtype=self.dtype)
        for column in self.columns:
            table[column.name] = column.fold(runs)
        return table

    def merge(self, a: Sequence[float], b: Sequence[float]) -> tuple[float, ...]:
        """Two summaries merged, each given as its column values in order."""
        out = list(a)
        for i, column in enumerate(self.columns):
            if column.merge is Merge.ADD:
                out[i] = a[i] + b[i]
            elif column.merge is Merge.MIN:
                out[i] = min(a[i], b[i])
            elif column.merge is Merge.MAX:
                out[i] = max(a[i], b[i])
        for members in self.groups.values():
            earliest = self.columns[members[0]].merge is Merge.EARLIEST
            mine, theirs = [a[i] for i in members], [b[i] for i in members]
            if (theirs < mine) if earliest else (theirs > mine):
                for i in members:
                    out[i] = b[i]
        return tuple(out)

    def fold(self, table: Floats, present: npt.NDArray[np.bool_]) -> dict[str, Floats]:
        """Many summaries merged along the first axis of `table` (columns on the last axis),
        where `present` (the table's shape without its last axis) marks the ones to merge;
        each column of the result has the table's shape without its first and last axes."""
        out: dict[str, Floats] = {}
        for i, column in enumerate(self.columns):
            if column.merge in (Merge.EARLIEST, Merge.LATEST):
                continue  # merged with its group below
            values = np.where(present, table[..., i], column.empty)
            if column.merge is Merge.ADD:
                out[column.name] = values.sum(axis=0)
            elif column.merge is Merge.MIN:
                out[column.name] = values.min(axis=0)
            else:
                out[column.name] = values.max(axis=0)
        anything = present.any(axis=0)
        for members in self.groups.values():
            earliest = self.columns[members[0]].merge is Merge.EARLIEST
            worst = math.inf if earliest else -math.inf
            chosen = present.copy()
            for i in members:
                values = np.where(chosen, table[..., i], worst)
                best = values.min(axis=0) if earliest else values.max(axis=0)
                chosen &= values == best
            first_chosen = chosen.argmax(axis=0)[None]
            for i in members:
                taken = np.take_along_axis(table[..., i], first_chosen, axis=0)[0]
                out[self.names[i]] = np.where(anything, taken, self.columns[i].empty)
        return out

    def lua_source(self) -> str:
        """Lua that the aggregate scripts load first: SUMMARY (the struct format),
        SUMMARY_BYTES, `combined` (two summaries' values, the second as struct.unpack returns
        it, merged), `merge_summary(old, packed, at)` and `folded_summary(records)` (the
        summaries at the start of each record merged, packed)."""
        a = [f"{n}1" for n in self.names]
        b = [f"{n}2" for n in self.names]
        lines = [
            f"local SUMMARY, SUMMARY_BYTES = '{self.struct.format}', {self.size}",
            f"local function combined({', '.join(a + b)})",
        ]
        for members in self.groups.values():
            earliest = self.columns[members[0]].merge is Merge.EARLIEST
            wins = _lexicographic([self.names[i] for i in members], "<" if earliest else ">")
            firsts = ", ".join(a[i] for i in members)
            seconds = ", ".join(b[i] for i in members)
            lines += [f"  if {wins} then", f"    {firsts} = {seconds}", "  end"]
        merged = []
        for i, column in enumerate(self.columns):
            merged.append(
                {
                    Merge.ADD: f"{a[i]} + {b[i]}",
                    Merge.MIN: f"math.min({a[i]}, {b[i]})",
                    Merge.MAX: f"math.max({a[i]}, {b[i]})",
                }.get(column.merge, a[i])
            )
        names = ", ".join(self.names)
        lines += [
            f"  return {', '.join(merged)}",
            "end",
            "local function merge_summary(old, packed, at)",
            f"  local {names} = struct.unpack(SUMMARY, old)",
            f"  return struct.pack(SUMMARY, combined({names}, struct.unpack(SUMMARY, packed, at)))",
            "end",
            "local function folded_summary(records)",
            f"  local {names} = struct.unpack(SUMMARY, records[1])",
            "  for k = 2, #records do",
            f"    {names} = combined({names}, struct.unpack(SUMMARY, records[k]))",
            "  end",
            f"  return struct.pack(SUMMARY, {names})",
            "end",
        ]
        return "\n".join(lines) + "\n"


def _lexicographic(names: Sequence[str], less: str) -> str:
    """Lua: the second summary's `names` beat the first's, compared in order."""
    head, rest = names[0], names[1:]
    beats = f"{head}2 {less} {head}1"
    if not rest:
        return beats
    return f"{beats} or ({head}2 == {head}1 and ({_lexicographic(rest, less)}))"


def spread(count: npt.ArrayLike, total: npt.ArrayLike, total_sq: npt.ArrayLike) -> Floats:
    """Population standard deviation from a bucket's count, sum and sum of squares; for one
    bucket or, element by element, for arrays of them."""
    mean = np.divide(total, count)
    deviation: Floats = np.sqrt(np.maximum(0.0, np.divide(total_sq, count) - mean**2))
    return deviation


SUMMARY = Summary(
    [
        Column("c", Merge.ADD, lambda r: r.lengths, 0.0),
        Column("s", Merge.ADD, lambda r: np.add.reduceat(r.value, r.starts), 0.0),
        Column("q", Merge.ADD, lambda r: np.add.reduceat(r.value * r.value, r.starts), 0.0),
        Column("lo", Merge.MIN, lambda r: np.minimum.reduceat(r.value, r.starts), math.inf),
        Column("hi", Merge.MAX, lambda r: np.maximum.reduceat(r.value, r.starts), -math.inf),
        # Runs are sorted by time and then value: the first row is the first reading.
        Column("fts", Merge.EARLIEST, lambda r: r.ts[r.starts], math.inf, "first", time=True),
        Column("fv", Merge.EARLIEST, lambda r: r.value[r.starts], math.inf, "first"),
        Column("lts", Merge.LATEST, lambda r: r.ts[r.ends], -math.inf, "last", time=True),
        Column("lv", Merge.LATEST, lambda r: r.value[r.ends], -math.inf, "last"),
    ]
)

Report = Callable[[Mapping[str, Floats]], Floats]

# The statistics an answer gives, computed from the merged columns (for one bucket or, element
# by element, for arrays of them). Percentiles come from the histogram beside the summary.
REPORTS: dict[str, Report] = {
    "count": lambda c: c["c"],
    "mean": lambda c: np.divide(c["s"], c["c"]),
    "min": lambda c: c["lo"],
    "max": lambda c: c["hi"],
    "std": lambda c: spread(c["c"], c["s"], c["q"]),
    "first": lambda c: c["fv"],
    "first_ts_ms": lambda c: c["fts"],
    "last": lambda c: c["lv"],
    "last_ts_ms": lambda c: c["lts"],
}
# Reports that are whole numbers.
WHOLE_REPORTS = frozenset({"count", "first_ts_ms", "last_ts_ms"})
