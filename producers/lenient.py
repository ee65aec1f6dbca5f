"""Lenient decoding: what common firmware publishes, turned into a reading without losing the
whole of it to one odd field (pure: no I/O).

The rules, for one JSON reading object (README, "What the bridge accepts"):

- a number is a metric, as in strict decoding; `true`/`false` are 1 and 0; a string holding a
  decimal number (`"21.5"`) is that number;
- a nested object is flattened: `{"AM2301": {"Temperature": 21.3}}` gives the metric
  `AM2301_Temperature`, levels joined with `_`, down to MAX_DEPTH levels;
- in every name, each character outside `A-Z a-z 0-9 _` becomes `_` (`temperature:0` gives
  `temperature_0`);
- any other string is a label of the sensor (`"location": "gh-3"`), kept in the device
  registry rather than in the stream;
- `ts` may be seconds, milliseconds, microseconds or nanoseconds (told apart by magnitude:
  below 10^11 is seconds, below 10^14 milliseconds, below 10^17 microseconds), a string of
  digits, or ISO 8601 (UTC when it names no zone);
- what still cannot be used (null, a list, a bad `ts` or `seq`, a name that is not a metric
  name, an out-of-range number) is dropped with its reason; the rest of the reading is kept.

Wherever the strict decoder accepts a reading, this one gives the same entry (tests check it),
with one exception stated above: an integer `ts` outside 10^11-10^14, which strict decoding
takes as milliseconds (before March 1973, or after the year 5138), is seconds or a finer unit
here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from math import isfinite
from typing import Any

from ingest.contract.reading import (
    DECIMAL,
    MAX_INT64,
    METRIC_NAME,
    RESERVED,
    validate_sensor_id,
)
from ingest.errors import InvalidEntry
from ingest.labels import MAX_LABEL_VALUE_CHARS, label_value_ok

# Levels of nesting flattened into names; deeper values are dropped.
MAX_DEPTH = 4
# Fields (at every level together) looked at in one reading; the rest are dropped unread.
MAX_FIELDS = 256
_NOT_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]")
_SECONDS_BELOW = 10**11
_MILLISECONDS_BELOW = 10**14
_MICROSECONDS_BELOW = 10**17


# Field paths (nested ones joined with _) already seen to make a metric, and the metric's name:
# most readings are made only of these, and `usual_reading` decodes them with a lookup each.
_known_paths: dict[str, str] = {}
_KNOWN_PATHS_LIMIT = 10_000


@dataclass
class LenientReading:
    """One reading decoded leniently: its stream fields, the labels its strings gave, and each
    field left out with the reason."""

    fields: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    dropped: list[tuple[str, str]] = field(default_factory=list)


def metric_name(path: str) -> str:
    """A field's path as a metric or label name: characters outside A-Z a-z 0-9 _ become _."""
    return path if METRIC_NAME.fullmatch(path) else _NOT_NAME_CHARS.sub("_", path)


def timestamp_ms(value: Any) -> int:
    """`ts` in any unit this module accepts, as milliseconds; InvalidEntry otherwise."""
    if type(value) is str:
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 20:
            value = int(text)
        else:
            return iso_timestamp_ms(value)
    if type(value) not in (int, float) or not isfinite(value) or value < 0:
        raise InvalidEntry(f"ts must be a non-negative number or ISO 8601, got {str(value)[:40]!r}")
    if value < _SECONDS_BELOW:
        ms = int(value * 1000)
    elif value < _MILLISECONDS_BELOW:
        ms = int(value)
    elif value < _MICROSECONDS_BELOW:
        ms = int(value // 1000)
    else:
        ms = int(value // 1_000_000)
    if ms > MAX_INT64:
        raise InvalidEntry(f"ts {str(value)[:40]!r} is out of range")
    return ms


def iso_timestamp_ms(text: str) -> int:
    """An ISO 8601 time as milliseconds since the epoch (UTC when it names no zone)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEntry(f"ts must be milliseconds or ISO 8601, got {text[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ms = int(moment.timestamp() * 1000)
    if ms < 0:
        raise InvalidEntry(f"ts must not be before 1970, got {text[:40]!r}")
    return ms


def number_text(value: Any) -> str | None:
    """A JSON value as a metric's stream text, or None when it is not a number leniently."""
    kind = type(value)
    if kind is str:
        text = value.strip() if len(value) <= 64 else ""
        if DECIMAL.fullmatch(text):
            number = float(text)
            return repr(number) if isfinite(number) else None
        return None
    return _numeric_text(kind, value)


def usual_reading(sensor_id: str | None, item: Any) -> dict[str, str] | None:
    """The fields of a reading made only of known paths with numbers or booleans, a numeric
    `ts`, and `seq`; None for anything else, which `lenient_reading` judges (tests check both
    agree)."""
    if type(item) is not dict:
        return None
    if sensor_id is None:
        sensor_id = item.get("sensor_id")
        if type(sensor_id) is not str:
            return None
    fields = {"sensor_id": sensor_id}
    known = _known_paths
    for name, value in item.items():
        kind = type(value)
        # A flat field is handled here rather than in _usual_field: it is most of them.
        metric = known.get(name)
        if metric is not None and metric not in fields:
            text = _numeric_text(kind, value)
            if text is None:
                return None
            fields[metric] = text
        elif name == "ts":
            if kind is not int and kind is not float:
                return None
            try:
                fields["ts"] = str(timestamp_ms(value))
            except InvalidEntry:
                return None
        elif name == "seq":
            if kind is not int or not 0 <= value <= MAX_INT64:
                return None
            fields["seq"] = str(value)
        elif name == "sensor_id":
            if value != sensor_id:
                return None
        elif kind is not dict or not _usual_field(fields, name, value, 1):
            return None
    if len(fields) == 1 + ("ts" in fields) + ("seq" in fields):
        return None
    validate_sensor_id(sensor_id)
    return fields


def _usual_field(fields: dict[str, str], path: str, value: Any, depth: int) -> bool:
    kind = type(value)
    if kind is dict:
        if depth >= MAX_DEPTH:
            return False
        return all(_usual_field(fields, f"{path}_{key}", inner, depth + 1)
                   for key, inner in value.items())  # fmt: skip
    name = _known_paths.get(path)
    if name is None or name in fields:
        return False
    text = _numeric_text(kind, value)
    if text is None:
        return False
    fields[name] = text
    return True


def _numeric_text(kind: type, value: Any) -> str | None:
    """A float, int or bool value as a metric's text; None for anything else."""
    if kind is float:
        return repr(value) if isfinite(value) else None
    if kind is bool:
        return "1.0" if value else "0.0"
    if kind is int:
        try:
            return repr(float(value))
        except OverflowError:
            return None
    return None


def lenient_reading(sensor_id: str | None, item: Any) -> LenientReading:
    """A reading object decoded by the rules above; InvalidEntry when nothing of it can be a
    reading (not an object, no usable sensor id, or no metric left)."""
    if not isinstance(item, dict):
        raise InvalidEntry(f"each reading must be a JSON object, got {type(item).__name__}")
    if sensor_id is None:
        sensor_id = item.get("sensor_id")
        if not isinstance(sensor_id, str):
            raise InvalidEntry("sensor_id is missing or not a string")
    validate_sensor_id(sensor_id)
    reading = LenientReading({"sensor_id": sensor_id})
    budget = [MAX_FIELDS]
    for name, value in item.items():
        if name == "ts":
            _put_timestamp(reading, value)
        elif name == "seq":
            if type(value) is int and 0 <= value <= MAX_INT64:
                reading.fields["seq"] = str(value)
            else:
                reading.dropped.append(("seq", "seq must be a non-negative integer"))
        elif name == "sensor_id":
            if value != sensor_id:
                reading.dropped.append(("sensor_id", "contradicts the topic's sensor id"))
        else:
            _put(reading, name, value, 1, budget)
    if not any(name[0] != "_" for name in reading.fields if name not in RESERVED):
        reason = "entry has no metrics"
        if reading.dropped:
            reason += f" ({len(reading.dropped)} fields dropped: {reading.dropped[0][1]})"
        raise InvalidEntry(reason)
    return reading


def _put_timestamp(reading: LenientReading, value: Any) -> None:
    try:
        reading.fields["ts"] = str(timestamp_ms(value))
    except InvalidEntry as exc:
        reading.dropped.append(("ts", exc.reason))


def _put(reading: LenientReading, path: str, value: Any, depth: int, budget: list[int]) -> None:
    """Add one field (and, for an object, what it holds) to the reading."""
    budget[0] -= 1
    shown = path[:40]
    if budget[0] < 0:
        if budget[0] == -1:
            reading.dropped.append((shown, f"over the {MAX_FIELDS} fields a reading may have"))
        return
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            reading.dropped.append((shown, f"nested deeper than {MAX_DEPTH} levels"))
            return
        for key, inner in value.items():
            _put(reading, f"{path}_{key}", inner, depth + 1, budget)
        return
    name = metric_name(path)
    if METRIC_NAME.fullmatch(name) is None:
        reading.dropped.append((shown, "not a valid metric name"))
        return
    if name in reading.fields or name in reading.labels or name in RESERVED:
        reading.dropped.append((shown, f"name {name!r} is taken by another field"))
        return
    text = number_text(value)
    if text is not None:
        reading.fields[name] = text
        if type(value) is not str and name[0] != "_" and len(_known_paths) < _KNOWN_PATHS_LIMIT:
            _known_paths[path] = name
    elif type(value) is str and DECIMAL.fullmatch(value.strip()):
        reading.dropped.append((shown, "number out of range"))
    elif type(value) is str:
        if label_value_ok(value) and value.strip():
            reading.labels[name] = value
        else:
            reading.dropped.append((shown, f"a string label must be 1-{MAX_LABEL_VALUE_CHARS} "
                                           "printable characters"))  # fmt: skip
    elif value is None:
        reading.dropped.append((shown, "null is not a value"))
    elif isinstance(value, list):
        reading.dropped.append((shown, "a list is not a metric"))
    else:
        reading.dropped.append((shown, "not a finite number"))
