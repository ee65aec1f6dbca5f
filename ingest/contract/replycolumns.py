"""Reading columns decoded straight from the bytes of a read's reply (see `resp`).

They are the columns `decode_columns` makes from strs, without a str per field: names and sensor
ids are told apart as 8-byte words, and numbers are parsed a column of characters at a time for
all of them at once (float() parses the values that are not plain decimals). A batch that does
not keep the contract in the usual way (an unknown or invalid name, a value that is not a
finite decimal number...) gives None, and is decoded from strs as before, entry by entry where
needed, so every refusal keeps its reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ingest.contract.columns import (
    NO_SEQ,
    SENSOR_COLUMN,
    SEQ_COLUMN,
    TS_COLUMN,
    Floats,
    Ints,
    ReadingColumns,
    assembled,
    columns_of,
    fields_in_place,
)
from ingest.contract.reading import DECIMAL_CHARS, MAX_INT64, validate_sensor_id
from ingest.errors import InvalidEntry
from ingest.redis.replies import Bytes, EntryLayout, joined, words

# Longer names and sensor ids are decoded from strs (they are refused or ignored there).
_NAME_WIDTH = 64
_SENSOR_WIDTH = 128
_DECIMALS = DECIMAL_CHARS.encode()
# Odd multipliers of a slice's 8-byte words for a key that tells slices apart; slices with equal
# keys are compared word by word, so a collision costs a slower decode, never a wrong one.
_WEIGHTS = np.random.default_rng(7).integers(1, 2**63, 17, dtype=np.uint64) | np.uint64(1)
_FLOAT_POWERS = 10.0 ** np.arange(23)
# Decimals with this many digits or fewer, without an exponent, are exactly m / 10**k in floats
# (m below 2**53, 10**k exact, one correctly rounded division): what float() gives.
_EXACT_DIGITS = 15
_FAST_DECIMAL_WIDTH = 16


def decode_layouts(layouts: Sequence[EntryLayout]) -> ReadingColumns | None:
    """The readings of entries read in one or more replies, in order; None unless every entry
    keeps the contract in the usual way."""
    layout = EntryLayout.concatenated(layouts)
    n = len(layout)
    if n == 0:
        return None
    ids = layout.ids()
    columns = _columns(layout.buffer, layout.name_start, layout.name_len)
    row = layout.field_entry
    if columns is None or not fields_in_place(columns, row, n):
        return None
    buffer, starts, lengths = layout.buffer, layout.value_start, layout.value_len

    sensor_fields = np.flatnonzero(columns == SENSOR_COLUMN)
    sensors = _sensors(buffer, starts[sensor_fields], lengths[sensor_fields])
    if sensors is None:
        return None
    sensor_names, sensor = sensors

    is_metric = columns >= 0
    values = _decimals(buffer, starts[is_metric], lengths[is_metric])
    if values is None:
        return None
    ts = _unsigned(buffer, starts, lengths, columns == TS_COLUMN, row, n)
    seq = _unsigned(buffer, starts, lengths, columns == SEQ_COLUMN, row, n)
    if ts is None or seq is None:
        return None
    return assembled(ids, sensor_names, sensor, ts, seq, columns, row, values)


def _distinct(
    buffer: Bytes, starts: Ints, lengths: Ints, width: int
) -> tuple[list[bytes], Ints, Ints] | None:
    """The distinct slices (as bytes), where each is first met and which each slice is; None
    when a slice is empty or longer than `width`, or two keys collide."""
    if not len(starts):
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64)
    if int(lengths.min()) == 0 or int(lengths.max()) > width:
        return None
    count = (int(lengths.max()) + 7) // 8
    found = words(buffer, starts, lengths, count)
    keys = (found * _WEIGHTS[:count]).sum(axis=1, dtype=np.uint64)
    keys += lengths.astype(np.uint64) * _WEIGHTS[-1]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if (found != found[first[inverse]]).any() or (lengths != lengths[first[inverse]]).any():
        return None
    slices = [
        buffer[at : at + size].tobytes()
        for at, size in zip(starts[first].tolist(), lengths[first].tolist(), strict=True)
    ]
    return slices, first, inverse.astype(np.int64)


def _columns(buffer: Bytes, starts: Ints, lengths: Ints) -> Ints | None:
    """Each field name's column (see `column_of`); None when a name is not one."""
    distinct = _distinct(buffer, starts, lengths, _NAME_WIDTH)
    if distinct is None:
        return None
    names, first, inverse = distinct
    columns = np.zeros(len(names), np.int64)
    # Names new to `column_of` are numbered in the order they are met, as `decode_columns`
    # numbers them, so that an entry's columns keep ascending.
    met = np.argsort(first)
    found = columns_of([names[i].decode("utf-8", "surrogateescape") for i in met.tolist()])
    if found is None:
        return None
    columns[met] = found
    return columns[inverse]


def _sensors(buffer: Bytes, starts: Ints, lengths: Ints) -> tuple[list[str], Ints] | None:
    """The sensor ids in the order they are first met, and each reading's place among them."""
    distinct = _distinct(buffer, starts, lengths, _SENSOR_WIDTH)
    if distinct is None:
        return None
    names, first, inverse = distinct
    order = np.argsort(first, kind="stable")
    place = np.empty(len(order), np.int64)
    place[order] = np.arange(len(order))
    sensor_ids = [names[i].decode("utf-8", "surrogateescape") for i in order.tolist()]
    try:
        for sensor_id in sensor_ids:
            validate_sensor_id(sensor_id)
    except InvalidEntry:
        return None
    return sensor_ids, place[inverse]


def _decimals(buffer: Bytes, starts: Ints, lengths: Ints) -> Floats | None:
    """The values as floats; None unless each is a finite decimal number.

    Plain decimals (a sign, up to 15 digits, a point) are parsed as arrays, a column of
    characters at a time; others (exponents, more digits) by float()."""
    if int(lengths.min(initial=1)) == 0:
        return None
    width = min(int(lengths.max(initial=1)), _FAST_DECIMAL_WIDTH)
    columns = _rows(buffer, starts, lengths, width).T.copy()
    first = columns[0]
    negative = first == 45
    plain = lengths <= width
    mantissa = np.zeros(len(starts), np.int64)
    digits = np.zeros(len(starts), np.int64)
    decimals = np.zeros(len(starts), np.int64)
    points = np.zeros(len(starts), np.int64)
    for at, characters in enumerate(columns):
        inside = at < lengths
        digit = characters - np.uint8(48)
        is_digit = (digit < 10) & inside
        is_point = (characters == 46) & inside
        other = inside & ~is_digit & ~is_point
        if at == 0:
            other &= ~negative & (first != 43)
        plain &= ~other
        mantissa = np.where(is_digit, mantissa * 10 + digit, mantissa)
        digits += is_digit
        decimals += is_digit & (points > 0)
        points += is_point
    plain &= (points <= 1) & (digits > 0) & (digits <= _EXACT_DIGITS)
    values = mantissa.astype(np.float64) / _FLOAT_POWERS[np.minimum(decimals, 22)]
    values = np.where(negative, -values, values)
    if plain.all():
        return values
    others = np.flatnonzero(~plain)
    text = joined(buffer, starts[others], lengths[others], b",")
    if text.translate(None, _DECIMALS + b","):
        return None
    try:
        values[others] = list(map(float, text.split(b",")))
    except ValueError:
        return None
    return values if np.isfinite(values).all() else None


def _rows(buffer: Bytes, starts: Ints, lengths: Ints, width: int) -> Bytes:
    """The first `width` bytes at each start (past a slice's end: whatever follows it)."""
    windows = np.lib.stride_tricks.sliding_window_view(buffer, width)
    return windows[np.minimum(starts, len(windows) - 1)]


def _unsigned(
    buffer: Bytes, starts: Ints, lengths: Ints, present: npt.NDArray[np.bool_], row: Ints, n: int
) -> Ints | None:
    """A `ts` or `seq` per entry (NO_SEQ where absent); None unless every one present is 1 to
    19 ASCII digits, at most MAX_INT64."""
    column = np.full(n, NO_SEQ, np.int64)
    if not present.any():
        return column
    lengths = lengths[present]
    if int(lengths.min()) == 0 or int(lengths.max()) > 19:
        return None
    columns = _rows(buffer, starts[present], lengths, int(lengths.max())).T.copy()
    numbers = np.zeros(len(lengths), np.uint64)
    for at, characters in enumerate(columns):
        inside = at < lengths
        digit = characters - np.uint8(48)
        if (inside & (digit >= 10)).any():
            return None
        numbers = np.where(inside, numbers * np.uint64(10) + digit, numbers)
    if int(numbers.max()) > MAX_INT64:
        return None
    column[row[present]] = numbers.astype(np.int64)
    return column
