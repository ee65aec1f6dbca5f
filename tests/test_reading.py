"""The stream contract: what decodes, what is refused and why, and exact round trips."""

from __future__ import annotations

import math
import re
import string

import pytest
import redis
import walrus
from hypothesis import given
from hypothesis import strategies as st

from ingest.contract.reading import DECIMAL, Reading, entry_time_ms
from ingest.errors import InvalidEntry
from tests.helpers import entries


def test_plain_client_entry_is_a_reading_timed_by_its_id(redis_url: str) -> None:
    plain = redis.Redis.from_url(redis_url, decode_responses=True)
    entry_id = plain.execute_command(  # type: ignore[no-untyped-call]
        "XADD", "app:event", "*", "sensor_id", "s1", "temp", "21.5", "humidity", "0.41"
    )
    [(read_id, fields)] = entries(plain, "app:event")
    reading = Reading.decode(read_id, fields)
    assert read_id == entry_id
    assert reading.sensor_id == "s1"
    assert reading.metrics == {"temp": 21.5, "humidity": 0.41}
    assert reading.seq is None
    assert reading.ts_ms == entry_time_ms(entry_id)
    assert reading.ts_from_entry_id


def test_walrus_stream_add_writes_a_valid_reading(redis_url: str) -> None:
    db = walrus.Database.from_url(redis_url)
    entry_id = db.Stream("app:event").add({"sensor_id": "s2", "temp": 19.25, "seq": 4})
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    [(read_id, fields)] = entries(decoding, "app:event")
    reading = Reading.decode(read_id, fields)
    assert read_id == entry_id.decode()
    assert (reading.sensor_id, reading.seq, reading.metrics) == ("s2", 4, {"temp": 19.25})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "entry has no fields"),
        ({"temp": "1"}, "sensor_id is missing"),
        ({"sensor_id": "s1"}, "entry has no metrics"),
        ({"sensor_id": "s*1", "temp": "1"}, "sensor_id must be"),
        ({"sensor_id": "s{1}", "temp": "1"}, "sensor_id must be"),
        ({"sensor_id": "s 1", "temp": "1"}, "sensor_id must be"),
        ({"sensor_id": "sensör", "temp": "1"}, "sensor_id must be"),
        ({"sensor_id": "x" * 129, "temp": "1"}, "sensor_id must be"),
        ({"sensor_id": "s1", "temp": "warm"}, "must be a finite decimal number"),
        ({"sensor_id": "s1", "temp": "NaN"}, "must be a finite decimal number"),
        ({"sensor_id": "s1", "temp": "inf"}, "must be a finite decimal number"),
        ({"sensor_id": "s1", "temp": "1e999"}, "out of range"),
        ({"sensor_id": "s1", "temp": " 1"}, "must be a finite decimal number"),
        ({"sensor_id": "s1", "temp": "1_000"}, "must be a finite decimal number"),
        ({"sensor_id": "s1", "x" * 10_000: "1"}, "is not a valid metric name"),
        ({"sensor_id": "s1", "9lives": "1"}, "is not a valid metric name"),
        ({"sensor_id": "s1", "temp": "1", "ts": "-5"}, "ts must be a non-negative integer"),
        ({"sensor_id": "s1", "temp": "1", "ts": "1.5"}, "ts must be a non-negative integer"),
        ({"sensor_id": "s1", "temp": "1", "seq": "9" * 20}, "seq must be a non-negative integer"),
    ],
)
def test_broken_entries_are_refused_with_a_reason(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(InvalidEntry) as refused:
        Reading.decode("1700000000000-0", fields)
    assert reason in refused.value.reason
    assert len(refused.value.reason) < 200


def test_reserved_and_underscore_fields_are_not_metrics() -> None:
    reading = Reading.decode(
        "5-0", {"sensor_id": "a.b:c-d_e", "ts": "7", "seq": "0", "_source": "x", "t": "-1.5e2"}
    )
    assert reading.metrics == {"t": -150.0}
    assert (reading.ts_ms, reading.seq, reading.ts_from_entry_id) == (7, 0, False)


sensor_ids = st.text(string.ascii_letters + string.digits + "_.:-", min_size=1, max_size=128)
metric_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,63}", fullmatch=True).filter(
    lambda name: name not in {"sensor_id", "ts", "seq"}
)
finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    sensor_id=sensor_ids,
    ts_ms=st.integers(0, 2**53),
    seq=st.none() | st.integers(0, 2**63 - 1),
    metrics=st.dictionaries(metric_names, finite, min_size=1, max_size=8),
)
def test_encode_decode_round_trip_is_exact(
    sensor_id: str, ts_ms: int, seq: int | None, metrics: dict[str, float]
) -> None:
    reading = Reading(sensor_id, ts_ms, metrics, seq)
    decoded = Reading.decode("1-0", reading.encode())
    assert decoded == reading
    for name, value in metrics.items():
        assert math.copysign(1, decoded.metrics[name]) == math.copysign(1, value)


@given(
    st.text(alphabet="0123456789.eE+-_ naifINF\u0661\uff11", max_size=12)
    | st.from_regex(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?", fullmatch=True)
)
def test_metric_values_are_exactly_the_decimal_numbers_of_the_contract(text: str) -> None:
    expected = DECIMAL.fullmatch(text) is not None and math.isfinite(float(text))
    try:
        Reading.decode("1-0", {"sensor_id": "s", "m": text})
        accepted = True
    except InvalidEntry:
        accepted = False
    assert accepted == expected


@given(
    st.text(alphabet="0123456789 +-_.\u0663\uff11", max_size=21) | st.integers(0, 2**64).map(str)
)
def test_ts_and_seq_are_exactly_the_unsigned_integers_of_the_contract(text: str) -> None:
    expected = re.fullmatch(r"[0-9]{1,19}", text) is not None and int(text) < 2**63
    for field in ("ts", "seq"):
        try:
            Reading.decode("1-0", {"sensor_id": "s", "m": "1", field: text})
            accepted = True
        except InvalidEntry:
            accepted = False
        assert accepted == expected


@pytest.mark.parametrize("field", ["ts", "seq"])
def test_integers_are_ascii_digits_only(field: str) -> None:
    with pytest.raises(InvalidEntry):
        Reading.decode("1-0", {"sensor_id": "s", "m": "1", field: "\u0663"})
