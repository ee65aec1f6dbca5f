"""A batch of readings as columns, decoded from stream entries a whole batch at a time.

Consumers work on arrays; building a `Reading` and a dict per entry first cost them more than
everything else they do. `decode_columns` checks the contract for a whole batch with a few set
lookups and array operations; a batch that does not pass every check at once (a new sensor id
is fine, a bad one is not) is decoded entry by entry with `Reading.decode`, so every reason for
a dead letter is the one a single entry gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import numpy.typing as npt

from ingest.contract.entries import FlatFields, Refused, per_entry
from ingest.contract.reading import (
    DECIMAL_CHARS,
    MAX_INT64,
    Reading,
    entry_time_ms,
    validate_metric_name,
    validate_sensor_id,
)
from ingest.errors import InvalidEntry

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
# A reading without `seq`; also an absent `ts` while a batch is decoded.
NO_SEQ = -1
_DECIMAL_DELETED = str.maketrans("", "", DECIMAL_CHARS)
# Numbered in the order writers send them, so that an entry's columns usually ascend.
IGNORED_COLUMN, SENSOR_COLUMN, TS_COLUMN, SEQ_COLUMN = -4, -3, -2, -1
# Field name -> column: the reserved names, then metric names as they are first seen. Bounded
# against garbage; a name past the bound sends its batch down the entry-by-entry path.
_codes: dict[str, int] = {"sensor_id": SENSOR_COLUMN, "ts": TS_COLUMN, "seq": SEQ_COLUMN}
_metric_names: list[str] = []
_CODES_LIMIT = 10_000
# New names one batch may teach the table; a batch with more (one reading with thousands of
# made-up names, say) is decoded entry by entry instead, so that it cannot fill the table and
# push every later batch off the fast path.
NEW_NAMES_PER_BATCH = 256
_entry_by_entry = per_entry(Reading.decode)


@dataclass(frozen=True, slots=True)
class ReadingColumns:
    """Readings in stream order, one row each, and their metric values, one row per value in
    reading order: reading r comes from sensor `sensors[sensor[r]]`; value k belongs to reading
    `value_row[k]` and names metric `metric_names[value_metric[k]]`."""

    ids: list[str]
    sensors: list[str]
    sensor: Ints
    ts_ms: Ints
    # NO_SEQ where the reading has none.
    seq: Ints
    metric_names: list[str]
    value_row: Ints
    value_metric: Ints
    value: Floats

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> ReadingColumns:
        start, stop, step = rows.indices(len(self.ids))
        if step != 1:
            raise ValueError("readings are taken in runs of consecutive rows")
        first, end = np.searchsorted(self.value_row, [start, stop]).tolist()
        return ReadingColumns(
            self.ids[start:stop],
            self.sensors,
            self.sensor[start:stop],
            self.ts_ms[start:stop],
            self.seq[start:stop],
            self.metric_names,
            self.value_row[first:end] - start,
            self.value_metric[first:end],
            self.value[first:end],
        )

    def take(self, rows: Ints) -> ReadingColumns:
        """The readings at `rows` (ascending)."""
        renumbered = np.full(len(self.ids), -1, np.int64)
        renumbered[rows] = np.arange(len(rows))
        values = renumbered[self.value_row] >= 0
        return ReadingColumns(
            [self.ids[row] for row in rows.tolist()],
            self.sensors,
            self.sensor[rows],
            self.ts_ms[rows],
            self.seq[rows],
            self.metric_names,
            renumbered[self.value_row[values]],
            self.value_metric[values],
            self.value[values],
        )

    def metric(self, name: str) -> Floats:
        """One metric's value per reading, NaN where a reading lacks it."""
        column = np.full(len(self.ids), np.nan)
        if name in self.metric_names:
            mine = self.value_metric == self.metric_names.index(name)
            column[self.value_row[mine]] = self.value[mine]
        return column

    def reading(self, row: int) -> Reading:
        """One row as a Reading (for messages and tests, not for the hot path)."""
        first, end = np.searchsorted(self.value_row, [row, row + 1]).tolist()
        metrics = {
            self.metric_names[m]: v
            for m, v in zip(
                self.value_metric[first:end].tolist(), self.value[first:end].tolist(), strict=True
            )
        }
        seq = int(self.seq[row])
        return Reading(
            self.sensors[int(self.sensor[row])],
            int(self.ts_ms[row]),
            metrics,
            None if seq == NO_SEQ else seq,
        )

    @classmethod
    def of(cls, ids: Sequence[str], readings: Sequence[Reading]) -> ReadingColumns:
        """Readings already decoded, one per entry ID."""
        names: dict[str, int] = {}
        rows: list[int] = []
        codes: list[int] = []
        values: list[float] = []
        for row, reading in enumerate(readings):
            for name, value in reading.metrics.items():
                rows.append(row)
                codes.append(names.setdefault(name, len(names)))
                values.append(value)
        sensors: dict[str, int] = {}
        sensor = [sensors.setdefault(r.sensor_id, len(sensors)) for r in readings]
        return cls(
            list(ids),
            list(sensors),
            np.array(sensor, np.int64),
            np.array([r.ts_ms for r in readings], np.int64),
            np.array([NO_SEQ if r.seq is None else r.seq for r in readings], np.int64),
            list(names),
            np.array(rows, np.int64),
            np.array(codes, np.int64),
            np.array(values, np.float64),
        )


def decode_columns(
    ids: Sequence[str], fields: Sequence[FlatFields]
) -> tuple[ReadingColumns, Refused]:
    """The valid entries of a batch as columns, and the positions and reasons of the others."""
    columns = _decode_at_once(ids, fields)
    if columns is not None:
        return columns, []
    kept, refused = _entry_by_entry(ids, fields)
    return ReadingColumns.of(kept.ids, kept.values), refused


def columns_of(names: Sequence[str]) -> list[int] | None:
    """The column of each name, in order (learning new ones as `column_of`); None when one is
    not a name, or the names would teach more than NEW_NAMES_PER_BATCH new ones."""
    found = list(map(_codes.get, names))
    if None not in found:
        return found  # type: ignore[return-value]
    if len({n for n, c in zip(names, found, strict=True) if c is None}) > NEW_NAMES_PER_BATCH:
        return None
    learned = [column_of(n) if c is None else c for n, c in zip(names, found, strict=True)]
    return None if None in learned else learned  # type: ignore[return-value]


def column_of(name: str) -> int | None:
    """A field name's column, learning names not seen before; None for a name that is not
    valid (or one too many to remember)."""
    known = _codes.get(name)
    if known is not None:
        return known
    if len(_codes) >= _CODES_LIMIT:
        return None
    if name[:1] == "_":
        _codes[name] = IGNORED_COLUMN
        return IGNORED_COLUMN
    try:
        validate_metric_name(name)
    except InvalidEntry:
        return None
    _codes[name] = len(_metric_names)
    _metric_names.append(name)
    return _codes[name]


def _decode_at_once(ids: Sequence[str], fields: Sequence[FlatFields]) -> ReadingColumns | None:
    """Columns for a batch in which every entry keeps the contract in the usual way; None as
    soon as one may not."""
    n = len(ids)
    if n == 0:
        return ReadingColumns.of([], [])
    sizes = np.fromiter(map(len, fields), np.int64, n)
    if sizes.min() < 4 or (sizes & 1).any():
        return None
    flat = list(chain.from_iterable(fields))
    names, texts = flat[0::2], flat[1::2]
    codes_or_none = columns_of(names)
    if codes_or_none is None:
        return None
    codes = np.array(codes_or_none, np.int64)
    row = np.repeat(np.arange(n), sizes // 2)
    if not fields_in_place(codes, row, n):
        return None
    texts_array = np.array(texts, dtype=object)

    is_sensor = codes == SENSOR_COLUMN
    sensors: dict[str, int] = {}
    sensor = [sensors.setdefault(s, len(sensors)) for s in texts_array[is_sensor].tolist()]
    try:
        for sensor_id in sensors:
            validate_sensor_id(sensor_id)
    except InvalidEntry:
        return None

    is_metric = codes >= 0
    metric_texts: list[str] = texts_array[is_metric].tolist()
    # float() refuses an empty text; what it takes beyond decimals uses other characters.
    if "".join(metric_texts).translate(_DECIMAL_DELETED):
        return None
    try:
        values = np.array(list(map(float, metric_texts)), np.float64)
    except ValueError:
        return None
    if not np.isfinite(values).all():
        return None

    ts = _unsigned_column(texts_array, codes == TS_COLUMN, row, n)
    seq = _unsigned_column(texts_array, codes == SEQ_COLUMN, row, n)
    if ts is None or seq is None:
        return None
    return assembled(
        list(ids), list(sensors), np.array(sensor, np.int64), ts, seq, codes, row, values
    )


def assembled(
    ids: list[str],
    sensors: list[str],
    sensor: Ints,
    ts: Ints,
    seq: Ints,
    columns: Ints,
    row: Ints,
    values: Floats,
) -> ReadingColumns:
    """Columns from a batch's parts, its fields given by their columns (see `column_of`) and
    entries (`row`), `values` those of the metric fields in order; an entry without `ts` (NO_SEQ)
    takes its ID's time."""
    no_ts = ts == NO_SEQ
    if no_ts.any():
        ts[no_ts] = [entry_time_ms(ids[i]) for i in np.flatnonzero(no_ts).tolist()]
    is_metric = columns >= 0
    used, value_metric = np.unique(columns[is_metric], return_inverse=True)
    return ReadingColumns(
        ids,
        sensors,
        sensor,
        ts,
        seq,
        [_metric_names[c] for c in used.tolist()],
        row[is_metric],
        value_metric.astype(np.int64),
        values,
    )


def fields_in_place(codes: Ints, row: Ints, n: int) -> bool:
    """Each of n entries (field f in entry `row[f]`, of column `codes[f]`) has one sensor_id, at
    least one metric and no column twice."""
    # One field per column within an entry: seen at a glance where every entry sends its fields
    # in the usual order, by sorting otherwise.
    field_keys = row * (len(_metric_names) + 8) + (codes - IGNORED_COLUMN)
    if not (np.diff(field_keys) > 0).all() and len(np.unique(field_keys)) != len(field_keys):
        return False
    if int(np.count_nonzero(codes == SENSOR_COLUMN)) != n:
        return False
    return bool(np.bincount(row[codes >= 0], minlength=n).all())


def _unsigned_column(
    texts: npt.NDArray[np.object_], present: npt.NDArray[np.bool_], row: Ints, n: int
) -> Ints | None:
    """A `ts` or `seq` per row (NO_SEQ where absent); None unless every one present is 1 to 19
    ASCII digits, at most MAX_INT64."""
    column = np.full(n, NO_SEQ, np.int64)
    if not present.any():
        return column
    found: list[str] = texts[present].tolist()
    joined = "".join(found)
    lengths = list(map(len, found))
    if not (joined.isascii() and joined.isdigit()) or min(lengths) == 0 or max(lengths) > 19:
        return None
    numbers = list(map(int, found))
    if max(numbers) > MAX_INT64:
        return None
    column[row[present]] = numbers
    return column
