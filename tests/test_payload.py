"""What devices may publish, and the reason for everything they may not (no servers)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import InvalidEntry
from producers.payload import (
    DEFAULT_TOPICS,
    LENIENT,
    STRICT,
    Parsed,
    TopicTemplate,
    _checked_reading,
    _reading,
    json_document,
    parse_message,
    subscriptions,
)

TEMPLATES = [TopicTemplate(t) for t in DEFAULT_TOPICS]


def parse(topic: str, payload: bytes | str) -> list[dict[str, str]]:
    """The readings of a message that must hold no invalid one."""
    parsed = read(topic, payload)
    assert parsed.refused == []
    return parsed.readings


def read(topic: str, payload: bytes | str, decoding: str = LENIENT) -> Parsed:
    raw = payload.encode() if isinstance(payload, str) else payload
    return parse_message(topic, raw, TEMPLATES, 1024, decoding=decoding)


def test_an_object_an_array_and_a_bare_number() -> None:
    assert parse("sensors/s1/telemetry", '{"temp": 21.5, "humidity": 0.41}') == [
        {"sensor_id": "s1", "temp": "21.5", "humidity": "0.41"}
    ]
    assert parse("sensors/s1/telemetry", '[{"temp": 1, "seq": 7, "ts": 1700000000000}]') == [
        {"sensor_id": "s1", "temp": "1.0", "seq": "7", "ts": "1700000000000"}
    ]
    assert parse("sensors/s1/telemetry", '{"temp": 2, "ts": "2023-11-14T22:13:20Z"}') == [
        {"sensor_id": "s1", "temp": "2.0", "ts": "1700000000000"}
    ]
    assert parse("sensors/s1/temp", b" 21.5 ") == [{"sensor_id": "s1", "temp": "21.5"}]
    assert parse("sensors/s1/telemetry", '{"sensor_id": "s1", "temp": 3}')[0] == {
        "sensor_id": "s1", "temp": "3.0"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("sensors/s1/telemetry", "{not json", "payload is not JSON"),
        ("sensors/s1/telemetry", "21.5", "must be a JSON object or an array"),
        ("sensors/s1/telemetry", "[]", "empty JSON array"),
        ("sensors/s1/telemetry", '{"temp": "warm"}', "must be a number, got str"),
        ("sensors/s1/telemetry", '{"temp": true}', "must be a number, got bool"),
        ("sensors/s1/telemetry", '{"temp": NaN}', "payload is not JSON"),
        ("sensors/s1/telemetry", '{"temp": 1e999}', "must be a finite number"),
        ("sensors/s1/telemetry", '{"temp": {"a": 1}}', "must be a number, got dict"),
        ("sensors/s1/telemetry", '{"temp": 1, "sensor_id": "s2"}', "contradicts the topic"),
        ("sensors/s1/telemetry", '{"temp": 1, "seq": -1}', "seq must be a non-negative"),
        ("sensors/s1/telemetry", '{"temp": 1, "ts": "yesterday"}', "ts must be milliseconds"),
        ("sensors/s1/telemetry", '{"bad name": 1}', "is not a valid metric name"),
        ("sensors/s1/telemetry", "[" * 400 + "]" * 400, "must be a JSON object, got list"),
        ("sensors/s1/telemetry", b"\xff\xfe", "payload is not JSON"),
        ("sensors/s1/telemetry", "{}", "entry has no metrics"),
        ("sensors/s*1/telemetry", '{"temp": 1}', "sensor_id must be"),
        ("sensors/s{1}/temp", "1", "sensor_id must be"),
        ("sensors/s1/temp", "NaN", "finite decimal number"),
        ("sensors/s1/temp", "€", "must be ASCII"),
        ("elsewhere/s1", "1", "matches no configured topic"),
        ("sensors/s1/telemetry", '{"temp": ' + "1" * 2000 + "}", "over the 1024 limit"),
    ],
)
def test_everything_else_has_a_reason(topic: str, payload: str | bytes, reason: str) -> None:
    parsed = read(topic, payload, STRICT)
    assert parsed.readings == []
    [refusal] = parsed.refused
    assert refusal.at == 0 and reason in refusal.reason


def test_an_array_keeps_its_good_readings_and_refuses_the_bad_ones() -> None:
    parsed = read("sensors/s1/telemetry", json.dumps([{"temp": 1}, {"temp": "x"}, {"t": 2}]))
    assert [r["temp" if "temp" in r else "t"] for r in parsed.readings] == ["1.0", "2.0"]
    assert [r.at for r in parsed.refused] == [1]


def test_overlapping_topics_are_subscribed_once() -> None:
    assert subscriptions(TEMPLATES) == ["sensors/+/+"]
    other = [TopicTemplate("a/{sensor_id}/data"), TopicTemplate("b/{sensor_id}/{metric}")]
    assert subscriptions(other) == ["a/+/data", "b/+/+"]


@pytest.mark.parametrize("template", ["sensors/+/x", "no-sensor/{metric}", "a/{sensor}/b"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="topic template"):
        TopicTemplate(template)


def test_json_nested_deeper_than_python_recurses_is_refused_not_fatal() -> None:
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    [refusal] = parse_message("sensors/s1/telemetry", deep, TEMPLATES, 1 << 20).refused
    assert "payload is not JSON" in refusal.reason


def _standard(payload: bytes) -> object:
    def refuse(name: str) -> float:
        raise ValueError(name)

    try:
        document = json.loads(payload.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "refused"
    return document if isinstance(document, dict | list) else "refused"


def _fast(payload: bytes) -> object:
    try:
        return json_document(payload)
    except InvalidEntry:
        return "refused"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(document=st.lists(json_values) | st.dictionaries(st.text(), json_values),
       garbage=st.binary(max_size=40), cut=st.integers(0, 200))  # fmt: skip
def test_json_is_read_exactly_as_the_standard_parser_reads_it(
    document: object, garbage: bytes, cut: int
) -> None:
    """Huge integers, numbers beyond double range, lone surrogates, Infinity, truncation and raw
    bytes included: the same values of the same types, or refused by both."""
    escaped = json.dumps(document)
    raw = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    for payload in (escaped.encode(), raw, escaped[:cut].encode(), garbage):
        assert repr(_fast(payload)) == repr(_standard(payload))


def _outcome(read: Callable[[], dict[str, str]]) -> object:
    try:
        return read()
    except InvalidEntry as exc:
        return exc.reason


field_names = st.sampled_from(["temp", "rh", "_note", "ts", "seq", "sensor_id", "9x", "a-b"])
field_values = (
    st.floats() | st.integers() | st.booleans() | st.none() | st.text(max_size=3)
    | st.sampled_from(["s1", "s2", "bad id"])
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(item=st.dictionaries(field_names, field_values) | st.lists(st.integers()),
       topic_sensor=st.sampled_from([None, "s1"]))  # fmt: skip
def test_the_quick_path_for_usual_readings_agrees_with_the_full_checks(
    item: object, topic_sensor: str | None
) -> None:
    checked = _outcome(lambda: _checked_reading(topic_sensor, item))
    # Asked second, once the full checks have taught it the names.
    assert _outcome(lambda: _reading(topic_sensor, item)) == checked
