"""Batches decoded as columns: the same readings and the same refusals as entry by entry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.contract.columns import ReadingColumns, _decode_at_once, decode_columns
from ingest.contract.entries import as_mapping
from ingest.contract.reading import Reading
from ingest.errors import InvalidEntry

SENSOR_IDS = ["s1", "dev-0042", "a.b:c_d", "s*1", "", "x" * 129, "sensör"]
UNSIGNED = ["0", "7", "1700000000000", "9223372036854775807", "9223372036854775808", "",
            "-1", "1" * 20, "+5", "٣", "1.0", " 5"]  # fmt: skip
DECIMALS = ["21.5", "-0.0", "1e-3", ".5", "5.", "+2", "1e999", "nan", "inf", " 1", "1_0", "",
            "+-1", "1e", "0x1", "\u0661", "1.2.3", "3E+2"]  # fmt: skip
METRICS = ["temp", "humidity", "battery_v", "_meta", "9bad", "bad name", "m" * 65]


def reading_fields(
    sensor_id: str, ts: int | None, seq: int | None, metrics: dict[str, str]
) -> list[str]:
    """A valid reading's flat fields."""
    flat = ["sensor_id", sensor_id]
    flat += ["ts", str(ts)] if ts is not None else []
    flat += ["seq", str(seq)] if seq is not None else []
    for name, value in metrics.items():
        flat += [name, value]
    return flat


def rarely(draw: st.DrawFn, usual: st.SearchStrategy[str], odd: list[str]) -> str:
    """Most fields are valid, so that a batch with one bad field among good ones is common."""
    return draw(st.sampled_from(odd)) if draw(st.integers(0, 9)) == 0 else draw(usual)


@st.composite
def entry_fields(draw: st.DrawFn) -> list[str]:
    """Flat fields, mostly a valid reading, sometimes broken in one or more ways."""
    fields: list[str] = []
    if draw(st.integers(0, 49)):
        fields += ["sensor_id", rarely(draw, st.sampled_from(SENSOR_IDS[:3]), SENSOR_IDS)]
    for name in ("ts", "seq"):
        if draw(st.booleans()):
            fields += [name, rarely(draw, st.integers(0, 2**40).map(str), UNSIGNED)]
    names = draw(st.lists(st.sampled_from(METRICS[:3]), min_size=1, max_size=3, unique=True))
    for metric in names:
        value = st.floats(allow_nan=False, allow_infinity=False).map(repr)
        fields += [rarely(draw, st.just(metric), METRICS), rarely(draw, value, DECIMALS)]
    if draw(st.integers(0, 9)) == 0:
        # A name twice in one entry (Redis allows it): the last value counts.
        fields += draw(st.sampled_from([fields[:2], fields[-2:]]))
    order = draw(st.permutations(range(len(fields) // 2)))
    return [text for i in order for text in fields[2 * i : 2 * i + 2]]


def entry_by_entry(
    ids: list[str], fields: list[list[str]]
) -> tuple[list[Reading], list[tuple[int, str]]]:
    readings, refused = [], []
    for position, (entry_id, flat) in enumerate(zip(ids, fields, strict=True)):
        try:
            readings.append(Reading.decode(entry_id, as_mapping(flat)))
        except InvalidEntry as exc:
            refused.append((position, exc.reason))
    return readings, refused


def rows_of(columns: ReadingColumns) -> list[Reading]:
    """The readings the columns hold, checking each value, sensor and metric name appears once."""
    assert len(set(columns.metric_names)) == len(columns.metric_names)
    assert len(set(columns.sensors)) == len(columns.sensors)
    readings = [columns.reading(row) for row in range(len(columns))]
    assert len(columns.value) == sum(len(r.metrics) for r in readings)
    return readings


@settings(max_examples=400, deadline=None)
@given(st.lists(entry_fields(), max_size=12))
def test_a_batch_decodes_as_its_entries_do_one_by_one(fields: list[list[str]]) -> None:
    ids = [f"{1700000000000 + i}-{i % 3}" for i in range(len(fields))]
    columns, refused = decode_columns(ids, fields)
    readings, expected_refused = entry_by_entry(ids, fields)
    assert refused == expected_refused
    kept = sorted(set(range(len(ids))) - {position for position, _ in refused})
    assert columns.ids == [ids[i] for i in kept]
    assert rows_of(columns) == readings


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(SENSOR_IDS[:3]),
            st.none() | st.integers(0, 2**62),
            st.none() | st.integers(0, 2**62),
            st.dictionaries(
                st.sampled_from(METRICS[:3]),
                st.floats(allow_nan=False, allow_infinity=False),
                min_size=1,
            ),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_valid_batches_are_decoded_at_once(
    made: list[tuple[str, int | None, int | None, dict[str, float]]],
) -> None:
    """The whole-batch path takes every valid batch (or it would buy nothing) and agrees with
    decoding entry by entry."""
    ids = [f"{1700000000000 + i}-0" for i in range(len(made))]
    fields = [
        reading_fields(sensor_id, ts, seq, {name: repr(v) for name, v in metrics.items()})
        for sensor_id, ts, seq, metrics in made
    ]
    at_once = _decode_at_once(ids, fields)
    assert at_once is not None
    assert rows_of(at_once) == entry_by_entry(ids, fields)[0]


def test_runs_and_rows_taken_keep_their_values() -> None:
    readings = [
        Reading(f"s{i % 3}", 1000 + i, {"a": float(i)} | ({"b": -float(i)} if i % 2 else {}), i)
        for i in range(10)
    ]
    columns = ReadingColumns.of([f"{i + 1}-0" for i in range(10)], readings)
    assert rows_of(columns[3:7]) == readings[3:7]
    assert columns[3:7].ids == ["4-0", "5-0", "6-0", "7-0"]
    rows = np.array([0, 4, 5, 9])
    assert rows_of(columns.take(rows)) == [readings[i] for i in rows]
    b = columns.metric("b")
    assert np.isnan(b[::2]).all() and (b[1::2] == [-1.0, -3.0, -5.0, -7.0, -9.0]).all()
    assert np.isnan(columns.metric("absent")).all()


GOOD = [["sensor_id", "s1", "ts", "1700000000000", "seq", "4", "temp", "21.5"],
        ["sensor_id", "s2", "seq", "5", "temp", "-3", "humidity", ".5"],
        ["humidity", "1e3", "sensor_id", "s1", "ts", "1700000000001"]]  # fmt: skip


@pytest.mark.parametrize(
    "odd",
    [
        ["sensor_id", "s3", "ts", "", "temp", "1"],
        ["sensor_id", "s3", "seq", "9223372036854775808", "temp", "1"],
        ["sensor_id", "s3", "ts", "12345678901234567890", "temp", "1"],
        ["sensor_id", "s3", "ts", "00000000000000000001", "temp", "1"],
        ["sensor_id", "s3", "ts", "\u0663", "temp", "1"],
        ["sensor_id", "s3", "temp", "nan"],
        ["sensor_id", "s3", "temp", "1e999"],
        ["sensor_id", "s3", "temp", ""],
        ["sensor_id", "s3", "temp", "1_0"],
        ["sensor_id", "s3", "temp", "1", "temp", "2"],
        ["sensor_id", "s3", "sensor_id", "s4", "temp", "2"],
        ["sensor_id", "s3", "ts", "1", "ts", "2", "temp", "2"],
        ["sensor_id", "s3", "_a", "x", "_b", "y", "temp", "2"],
        ["sensor_id", "s 3", "temp", "1"],
        ["sensor_id", "s3", "bad name", "1"],
        ["sensor_id", "s3", "_only", "1"],
        ["temp", "1", "humidity", "2"],
        ["sensor_id", "s3"],
    ],
)
def test_one_odd_entry_among_good_ones(odd: list[str]) -> None:
    fields = [*GOOD[:2], odd, GOOD[2]]
    ids = [f"{1700000000000 + i}-0" for i in range(len(fields))]
    columns, refused = decode_columns(ids, fields)
    readings, expected_refused = entry_by_entry(ids, fields)
    assert refused == expected_refused
    assert rows_of(columns) == readings
