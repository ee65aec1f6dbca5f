"""Lenient decoding: the rules one by one, and agreement with strict decoding (no servers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.contract.reading import Reading
from ingest.errors import InvalidEntry
from producers.lenient import (
    MAX_DEPTH,
    MAX_FIELDS,
    LenientReading,
    lenient_reading,
    timestamp_ms,
    usual_reading,
)
from producers.payload import (
    LENIENT,
    STRICT,
    TopicTemplate,
    _reading,
    document_readings,
    parse_message,
)


def lenient(item: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Fields, labels, and dropped field -> reason of one reading of sensor s1."""
    reading = lenient_reading("s1", item)
    Reading.decode("1-0", reading.fields)
    return reading.fields, reading.labels, dict(reading.dropped)


def test_what_firmware_sends_is_kept_field_by_field() -> None:
    fields, labels, dropped = lenient({
        "temp": 21.5, "occupancy": True, "battery_low": False, "rh": "45.5",
        "location": "gh-3", "AM2301": {"Temperature": 21.3, "Humidity": 45.0},
        "temperature:0": {"tC": 20.1}, "note": None, "history": [1, 2],
    })  # fmt: skip
    assert fields == {
        "sensor_id": "s1", "temp": "21.5", "occupancy": "1.0", "battery_low": "0.0",
        "rh": "45.5", "AM2301_Temperature": "21.3", "AM2301_Humidity": "45.0",
        "temperature_0_tC": "20.1",
    }  # fmt: skip
    assert labels == {"location": "gh-3"}
    assert dropped == {"note": "null is not a value", "history": "a list is not a metric"}


@pytest.mark.parametrize(
    ("ts", "ms"),
    [
        (1_700_000_000, 1_700_000_000_000),
        (1_700_000_000.25, 1_700_000_000_250),
        (1_700_000_000_123, 1_700_000_000_123),
        (1_700_000_000_123_456, 1_700_000_000_123),
        (1_700_000_000_123_456_789, 1_700_000_000_123),
        ("1700000000123", 1_700_000_000_123),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
        ("2023-11-14T22:13:20.5", 1_700_000_000_500),
    ],
)
def test_timestamps_in_every_unit(ts: Any, ms: int) -> None:
    assert timestamp_ms(ts) == ms
    fields, _, _ = lenient({"temp": 1, "ts": ts})
    assert fields["ts"] == str(ms)


def test_what_cannot_be_used_is_dropped_with_a_reason_and_the_rest_kept() -> None:
    fields, labels, dropped = lenient({
        "temp": 1, "ts": "yesterday", "seq": -4, "sensor_id": "other", "9lives": 3,
        "big": "1e999", "room": "r2", "x" * 70: 2, "blob": "y" * 500,
        "deep": {"a": {"b": {"c": {"d": 1}}}},
    })  # fmt: skip
    assert fields == {"sensor_id": "s1", "temp": "1.0"}
    assert labels == {"room": "r2"}
    assert set(dropped) == {"ts", "seq", "sensor_id", "9lives", "big", "x" * 40, "blob",
                            "deep_a_b_c"}  # fmt: skip
    assert "ISO 8601" in dropped["ts"] and "nested deeper" in dropped["deep_a_b_c"]
    assert MAX_DEPTH == 4


def test_a_reading_with_nothing_usable_is_refused_with_why() -> None:
    with pytest.raises(InvalidEntry, match=r"no metrics \(1 fields dropped: null"):
        lenient_reading("s1", {"a": None, "site": "x"})
    with pytest.raises(InvalidEntry, match="must be a JSON object"):
        lenient_reading("s1", [1])


def test_names_that_collide_after_flattening_keep_the_first() -> None:
    fields, _, dropped = lenient({"a_b": 1, "a": {"b": 2}, "a-b": 3})
    assert fields["a_b"] == "1.0"
    assert set(dropped) == {"a_b", "a-b"} and "taken" in dropped["a-b"]


def test_a_huge_flat_reading_costs_a_bounded_walk() -> None:
    item = {f"m{i}": {"v": i} for i in range(50_000)}
    reading = lenient_reading("s1", item)
    assert len(reading.fields) == 1 + MAX_FIELDS // 2
    assert len(reading.dropped) == 1 and "fields a reading may have" in reading.dropped[0][1]


def test_topic_levels_and_strings_become_the_sensors_labels() -> None:
    templates = [TopicTemplate("sensors/{site}/{sensor_id}/telemetry")]
    payload = json.dumps({"temp": 1, "room": "r2", "ok": True}).encode()
    parsed = parse_message("sensors/gh-3/s9/telemetry", payload, templates, 1024)
    assert parsed.readings == [{"sensor_id": "s9", "temp": "1.0", "ok": "1.0"}]
    assert parsed.notes["s9"].labels == {"site": "gh-3", "room": "r2"}
    strict = parse_message("sensors/gh-3/s9/telemetry", payload, templates, 1024,
                           decoding=STRICT)  # fmt: skip
    assert strict.readings == [] and "must be a number" in strict.refused[0].reason


def _outcome(decoding: str, item: object) -> Any:
    parsed = document_readings(item, "s1", decoding=decoding)  # type: ignore[arg-type]
    if parsed.refused:
        return "refused"
    return parsed.readings, {s: n.labels for s, n in parsed.notes.items()}, parsed.dropped


names = st.sampled_from(["temp", "rh", "_note", "ts", "seq", "sensor_id", "9x", "a-b", "a_b"])
values = (
    st.floats() | st.integers(-(2**70), 2**70) | st.booleans() | st.none() | st.text(max_size=3)
    | st.sampled_from(["s1", "21.5", "2023-11-14T22:13:20Z"])
)  # fmt: skip
documents = st.recursive(values, lambda inner: st.dictionaries(names, inner, max_size=4),
                         max_leaves=12)  # fmt: skip


# Readings strict decoding accepts, or nearly: most examples of the agreement test must be ones
# it accepts (arbitrary dictionaries almost never are).
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70)
reserved = st.fixed_dictionaries({}, optional={
    "ts": st.integers(0, 2**63 - 1) | st.sampled_from(["2023-11-14T22:13:20Z", "2023-11-14"]),
    "seq": st.integers(0, 2**63 - 1),
    "sensor_id": st.just("s1"),
})  # fmt: skip
strict_items = st.builds(
    lambda base, metrics: {**base, **metrics},
    reserved,
    st.dictionaries(st.sampled_from(["temp", "rh", "a_b", "_note", "x9", "T"]), numbers,
                    min_size=1, max_size=5),
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(item=strict_items | st.dictionaries(names, documents, max_size=6))
def test_lenient_gives_what_strict_gives_wherever_strict_accepts(item: dict[str, Any]) -> None:
    try:
        strict = _reading("s1", item)
    except InvalidEntry:
        return
    assert _outcome(STRICT, item) == ([strict], {}, [])
    readings, labels, dropped = _outcome(LENIENT, item)
    assert labels == {} and dropped == []
    [kept] = readings
    ts = item.get("ts")
    if type(ts) is int and not 10**11 <= ts < 10**14:
        # The one stated difference: such a ts is not milliseconds leniently.
        assert kept.pop("ts") == str(timestamp_ms(ts)) and strict.pop("ts") == str(ts)
    assert kept == strict


@settings(max_examples=400, deadline=None)
@given(item=st.dictionaries(names, documents, max_size=6))
def test_lenient_readings_always_keep_the_stream_contract(item: dict[str, Any]) -> None:
    parsed = document_readings(item, "s1")
    for fields in parsed.readings:
        Reading.decode("1-0", fields)
    assert len(parsed.readings) + len(parsed.refused) == 1


nested_numbers = st.dictionaries(
    st.sampled_from(["temp", "AM2301", "temperature:0", "tC", "a-b"]),
    numbers | st.booleans() | st.dictionaries(st.sampled_from(["tC", "rh", "x"]), numbers),
    min_size=1, max_size=4,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(item=nested_numbers | strict_items | st.dictionaries(names, documents, max_size=6),
       topic_sensor=st.sampled_from([None, "s1"]))  # fmt: skip
def test_the_quick_path_agrees_with_the_full_lenient_rules(
    item: dict[str, Any], topic_sensor: str | None
) -> None:
    full: LenientReading | None
    try:
        full = lenient_reading(topic_sensor, item)
    except InvalidEntry:
        full = None
    # Asked second, once the full rules have taught it the paths.
    quick = usual_reading(topic_sensor, item)
    if quick is not None:
        assert full is not None and not full.labels and not full.dropped
        assert quick == full.fields
