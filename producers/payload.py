"""What a device may publish, turned into stream entries (pure: no I/O).

Topics are templates with `{sensor_id}`, optionally `{metric}`, and any other `{name}` levels,
whose values become labels of the sensor (`sensors/{site}/{sensor_id}/telemetry`):

- `sensors/{sensor_id}/telemetry`: a JSON object `{"temp": 21.5, "humidity": 0.41}` with
  optional `ts` and `seq`, or a JSON array of such objects (a device flushing its buffer);
- `sensors/{sensor_id}/{metric}`: a bare number.

Decoding is lenient by default (`producers.lenient`: booleans, numeric strings, nested objects,
string labels, timestamps in any unit, one odd field dropped rather than the reading) or strict:
every field keeps the stream contract as it is, or the reading is refused. Every entry produced
passes the stream contract; what cannot be turned into one is refused with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import isfinite
from typing import Any, NamedTuple

import msgspec

from ingest.contract.reading import (
    MAX_INT64,
    RESERVED,
    Reading,
    validate_metric_name,
    validate_sensor_id,
)
from ingest.devices import DeviceNote
from ingest.errors import InvalidEntry
from ingest.labels import label_name_problem, label_value_ok
from producers.lenient import LenientReading, iso_timestamp_ms, lenient_reading, usual_reading

DEFAULT_TOPICS = ("sensors/{sensor_id}/telemetry", "sensors/{sensor_id}/{metric}")
# Readings one message or body may hold; more are refused whole before any is looked at.
MAX_READINGS = 10_000
LENIENT = "lenient"
STRICT = "strict"
DECODINGS = (LENIENT, STRICT)
_TOPIC_FIELDS = ("sensor_id", "metric")


@dataclass(frozen=True)
class TopicTemplate:
    template: str
    # Matching runs for every message: the levels to compare and to capture, found once.
    _depth: int = field(init=False, repr=False, compare=False)
    _fixed: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)
    _captured: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = self.template.split("/")
        if parts.count("{sensor_id}") != 1 or parts.count("{metric}") > 1:
            raise ValueError(
                f"topic template {self.template!r} needs one {{sensor_id}} level and at most "
                "one {metric} level"
            )
        names = [p[1:-1] for p in parts if p.startswith("{") and p.endswith("}")]
        if any(p in ("+", "#") or ("{" in p and not (p.startswith("{") and p.endswith("}")))
               for p in parts) or any(map(label_name_problem, names)):  # fmt: skip
            raise ValueError(
                f"topic template {self.template!r} has a wildcard or a level that is not a "
                "{name} of letters, digits and _"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"topic template {self.template!r} names a level twice")
        captured = tuple((i, p[1:-1]) for i, p in enumerate(parts) if p.startswith("{"))
        fixed = tuple((i, p) for i, p in enumerate(parts) if not p.startswith("{"))
        object.__setattr__(self, "_depth", len(parts))
        object.__setattr__(self, "_fixed", fixed)
        object.__setattr__(self, "_captured", captured)

    @property
    def subscription(self) -> str:
        levels = self.template.split("/")
        return "/".join("+" if level.startswith("{") else level for level in levels)

    @property
    def label_levels(self) -> tuple[str, ...]:
        """The names of the levels that give labels."""
        return tuple(name for _, name in self._captured if name not in _TOPIC_FIELDS)

    def labels(self, found: dict[str, str]) -> dict[str, str]:
        """The labels a matched topic gives (its level names were checked when the template
        was made; a value that cannot be a label is left out)."""
        return {name: found[name] for name in self.label_levels if label_value_ok(found[name])}

    def match(self, topic: str) -> dict[str, str] | None:
        return self.match_levels(topic.split("/"))

    def match_levels(self, parts: Sequence[str]) -> dict[str, str] | None:
        """`match` for a topic already split into its levels."""
        if len(parts) != self._depth:
            return None
        for i, text in self._fixed:
            if parts[i] != text:
                return None
        return {name: parts[i] for i, name in self._captured}


def subscriptions(templates: Sequence[TopicTemplate]) -> list[str]:
    """Topic filters for the templates, without a filter another one already covers: a broker
    delivers a message once per matching subscription."""
    filters = list(dict.fromkeys(t.subscription for t in templates))

    def covers(wide: str, narrow: str) -> bool:
        a, b = wide.split("/"), narrow.split("/")
        return len(a) == len(b) and all(x in ("+", y) for x, y in zip(a, b, strict=True))

    return [f for f in filters if not any(g != f and covers(g, f) for g in filters)]


class Refusal(NamedTuple):
    """A reading refused: its place in the message or body (0 for one that could not be read
    at all), and why."""

    at: int
    reason: str


class Dropped(NamedTuple):
    """A field left out of a reading that was written."""

    sensor_id: str
    name: str
    reason: str


@dataclass
class Parsed:
    """What one message or body holds: the stream entries of its valid readings, a refusal for
    each reading that is not valid, the fields dropped from readings kept, what it says about
    its devices, and the messages to publish in answer (a Sparkplug B rebirth request)."""

    readings: list[dict[str, str]] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    # Refused whole for holding more readings than allowed.
    too_many: bool = False
    dropped: list[Dropped] = field(default_factory=list)
    notes: dict[str, DeviceNote] = field(default_factory=dict)
    replies: list[tuple[str, bytes]] = field(default_factory=list)

    def note(self, sensor_id: str) -> DeviceNote:
        """The note about a sensor, made empty the first time."""
        found = self.notes.get(sensor_id)
        if found is None:
            found = self.notes[sensor_id] = DeviceNote()
        return found

    def add(self, reading: LenientReading) -> None:
        self.readings.append(reading.fields)
        sensor_id = reading.fields["sensor_id"]
        if reading.labels:
            self.note(sensor_id).labels.update(reading.labels)
        if reading.dropped:
            note = self.note(sensor_id)
            note.dropped += len(reading.dropped)
            name, reason = reading.dropped[-1]
            note.dropped_reason = f"{name}: {reason}"
            self.dropped.extend(Dropped(sensor_id, n, r) for n, r in reading.dropped)

    @classmethod
    def unreadable(cls, reason: str, *, too_many: bool = False) -> Parsed:
        return cls(refused=[Refusal(0, reason)], too_many=too_many)

    @property
    def items(self) -> int:
        return len(self.readings) + len(self.refused)


def parse_message(
    topic: str,
    payload: bytes,
    templates: Sequence[TopicTemplate],
    max_bytes: int,
    max_readings: int = MAX_READINGS,
    decoding: str = LENIENT,
) -> Parsed:
    """The readings of one MQTT message. A message that cannot be read at all is one refusal."""
    if len(payload) > max_bytes:
        return Parsed.unreadable(f"payload of {len(payload)} bytes is over the {max_bytes} limit")
    for template in templates:
        found = template.match(topic)
        if found is not None:
            break
    else:
        return Parsed.unreadable(f"topic {topic[:200]!r} matches no configured topic")
    return parse_matched(template, found, payload, max_readings, decoding)


def parse_matched(
    template: TopicTemplate,
    found: dict[str, str],
    payload: bytes,
    max_readings: int = MAX_READINGS,
    decoding: str = LENIENT,
    *,
    topic_labels: bool = True,
) -> Parsed:
    """`parse_message` once the topic matched `template`, giving `found`; with `topic_labels`,
    a note of the labels the topic's levels give."""
    try:
        sensor_id = validate_sensor_id(found["sensor_id"])
        if "metric" in found:
            parsed = Parsed(readings=[_bare_number(sensor_id, found["metric"], payload)])
        else:
            parsed = _document_readings(payload, sensor_id, max_readings, decoding)
    except InvalidEntry as exc:
        return Parsed.unreadable(exc.reason)
    if topic_labels and parsed.readings:
        labels = template.labels(found)
        if labels:
            parsed.note(sensor_id).labels.update(labels)
    return parsed


def parse_posted(body: bytes, max_readings: int = MAX_READINGS, decoding: str = LENIENT) -> Parsed:
    """Readings posted over HTTP: a JSON object or an array of them, each naming its own
    `sensor_id`. A body that cannot be read at all is one refusal."""
    return _document_readings(body, None, max_readings, decoding)


def _document_readings(
    payload: bytes, sensor_id: str | None, max_readings: int, decoding: str = LENIENT
) -> Parsed:
    """The readings of a JSON object or array; `sensor_id` is the topic's, or with None each
    reading's own."""
    try:
        document = json_document(payload)
    except InvalidEntry as exc:
        return Parsed.unreadable(exc.reason)
    return document_readings(document, sensor_id, max_readings, decoding)


def document_readings(
    document: dict[str, Any] | list[Any],
    sensor_id: str | None,
    max_readings: int = MAX_READINGS,
    decoding: str = LENIENT,
) -> Parsed:
    """The readings of a JSON object or array already parsed."""
    items = document if isinstance(document, list) else [document]
    if not items:
        return Parsed.unreadable("empty JSON array")
    if len(items) > max_readings:
        return Parsed.unreadable(
            f"{len(items)} readings, over the {max_readings} limit", too_many=True
        )
    parsed = Parsed()
    strict = decoding == STRICT
    for index, item in enumerate(items):
        try:
            if strict:
                parsed.readings.append(_reading(sensor_id, item))
                continue
            usual = usual_reading(sensor_id, item)
            if usual is not None:
                parsed.readings.append(usual)
            else:
                parsed.add(lenient_reading(sensor_id, item))
        except InvalidEntry as exc:
            parsed.refused.append(Refusal(index, exc.reason))
    return parsed


_fast_decoder = msgspec.json.Decoder()


def json_document(payload: bytes) -> Any:
    """The JSON document in a payload, exactly as `json.loads` reads it.

    msgspec parses a thousand readings in a third of the time, and gives the same values
    wherever it succeeds; it refuses a whole document for one number out of double range or one
    lone surrogate, which the standard parser reads so that each reading gets its own reason.
    """
    try:
        document = _fast_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        try:
            document = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise InvalidEntry(f"payload is not JSON: {str(exc)[:120]}") from None
    if not isinstance(document, dict | list):
        raise InvalidEntry("payload must be a JSON object or an array of objects")
    return document


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _number(name: str, value: Any) -> str:
    """A metric's JSON value as the stream keeps it; the hot path of every posted reading."""
    kind = type(value)
    if kind is float:
        if isfinite(value):
            return repr(value)
    elif kind is int:
        try:
            return repr(float(value))
        except OverflowError:
            pass
    else:
        raise InvalidEntry(f"metric {name[:40]!r} must be a number, got {kind.__name__}")
    raise InvalidEntry(f"metric {name[:40]!r} must be a finite number")


def _timestamp(value: Any) -> str:
    if _unsigned(value):
        return str(value)
    if isinstance(value, str):
        return str(iso_timestamp_ms(value))
    raise InvalidEntry("ts must be non-negative integer milliseconds or an ISO 8601 string")


def _unsigned(value: Any) -> bool:
    """A JSON integer the contract takes for `ts` or `seq`."""
    # type() rather than isinstance: JSON's true and false are bools, which are ints.
    return type(value) is int and 0 <= value <= MAX_INT64


def _reading(sensor_id: str | None, item: Any) -> dict[str, str]:
    """Fields of one reading object; its sensor id is the topic's, or with None its own."""
    fields = _usual_reading(sensor_id, item)
    return fields if fields is not None else _checked_reading(sensor_id, item)


# Metric names already checked that count as metrics (a "_" name alone does not make a reading).
_usual_metric_names: set[str] = set()
_USUAL_NAMES_LIMIT = 10_000


def _usual_reading(sensor_id: str | None, item: Any) -> dict[str, str] | None:
    """The fields of a reading made only of metric names seen before with finite float values,
    integer `ts` and `seq`; None for anything else, which `_checked_reading` judges.

    Nearly every reading a fleet sends is of this kind; set lookups and type tests are all it
    needs, a fifth less work per reading than the full checks.
    """
    if type(item) is not dict:
        return None
    if sensor_id is None:
        sensor_id = item.get("sensor_id")
        if type(sensor_id) is not str:
            return None
    fields = {"sensor_id": sensor_id}
    has_metric = False
    for name, value in item.items():
        if name in _usual_metric_names and type(value) is float and isfinite(value):
            fields[name] = repr(value)
            has_metric = True
        elif name in ("ts", "seq") and _unsigned(value):
            fields[name] = str(value)
        elif name != "sensor_id" or value != sensor_id:
            return None
    if not has_metric:
        return None
    validate_sensor_id(sensor_id)
    return fields


def _checked_reading(sensor_id: str | None, item: Any) -> dict[str, str]:
    """`_reading` for any JSON value: the fields, or InvalidEntry with the first reason found."""
    if not isinstance(item, dict):
        raise InvalidEntry(f"each reading must be a JSON object, got {type(item).__name__}")
    if sensor_id is None:
        sensor_id = item.get("sensor_id")
        if not isinstance(sensor_id, str):
            raise InvalidEntry("sensor_id is missing or not a string")
    fields = {"sensor_id": sensor_id}
    has_metric = False
    for name, value in item.items():
        if name not in RESERVED:
            fields[validate_metric_name(name)] = _number(name, value)
            if name[0] != "_":
                has_metric = True
                if len(_usual_metric_names) < _USUAL_NAMES_LIMIT:
                    _usual_metric_names.add(name)
        elif name == "ts":
            fields["ts"] = _timestamp(value)
        elif name == "seq":
            if not _unsigned(value):
                raise InvalidEntry("seq must be a non-negative integer")
            fields["seq"] = str(value)
        elif value != sensor_id:
            raise InvalidEntry(f"sensor_id {str(value)[:40]!r} contradicts the topic's")
    validate_sensor_id(sensor_id)
    if not has_metric:
        raise InvalidEntry("entry has no metrics")
    # Every value is a finite float's repr and every name was checked: the entry meets the
    # contract without being parsed again.
    return fields


def _bare_number(sensor_id: str, metric: str, payload: bytes) -> dict[str, str]:
    try:
        text = payload.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidEntry("a bare-number payload must be ASCII") from None
    fields = {"sensor_id": sensor_id, metric: text}
    Reading.decode("0-0", fields)
    return fields
