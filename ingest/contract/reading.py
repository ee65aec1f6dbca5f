"""A sensor reading and the stream contract: decode and validate entry fields, encode to fields.

The contract (fixed): `sensor_id` is 1-128 chars of [A-Za-z0-9_.:-]; optional `ts` is integer
milliseconds since the epoch (absent: the entry ID's time); optional `seq` is a non-negative
integer; every other field not starting with `_` is a metric named [A-Za-z_][A-Za-z0-9_]{0,63}
whose value is a finite decimal number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ingest.errors import InvalidEntry

SENSOR_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# What a metric value may look like; `parse_metric_value` checks it without a regex.
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
DECIMAL_CHARS = "0123456789.eE+-"
RESERVED = frozenset({"sensor_id", "ts", "seq"})
MAX_INT64 = 2**63 - 1
# Metric names repeat endlessly; checking each once is enough. Bounded against garbage.
_valid_names: set[str] = set()
_NAME_CACHE_LIMIT = 10_000
# So are sensor ids, in a fleet's worth.
_valid_sensor_ids: set[str] = set()
_SENSOR_CACHE_LIMIT = 200_000
_SHOWN_CHARS = 40


def _shown(text: str) -> str:
    """A field name or value as it appears in a reason: bounded, so a 10 kB name stays readable."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} chars)"


def entry_time_ms(entry_id: str) -> int:
    """The millisecond part of a stream entry ID such as `1700000000000-3`."""
    ms, _, _ = entry_id.partition("-")
    return int(ms)


def entry_order(entry_id: str) -> tuple[int, int]:
    """A key that sorts entry IDs as the stream does (as strings, `5-10` < `5-9`)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


MAX_UINT64 = 2**64 - 1
_ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def parse_entry_id(text: str) -> tuple[int, int]:
    """`ms-seq` as Redis takes it (both parts below 2**64); ValueError otherwise."""
    match = _ENTRY_ID.fullmatch(text)
    if match is None or int(match[1]) > MAX_UINT64 or int(match[2]) > MAX_UINT64:
        raise ValueError(f"expected a stream entry ID such as 1700000000000-0, got {text[:40]!r}")
    return int(match[1]), int(match[2])


def _unsigned(name: str, text: str) -> int:
    """1 to 19 ASCII digits, at most MAX_INT64; checked without a regular expression, since every
    reading's `ts` and `seq` pass here (isdigit alone would take other scripts' digits)."""
    if 0 < len(text) <= 19 and text.isascii() and text.isdigit():
        value = int(text)
        if value <= MAX_INT64:
            return value
    raise InvalidEntry(f"{name} must be a non-negative integer, got {_shown(text)}")


def parse_metric_value(name: str, text: str) -> float:
    # float() also takes "nan", "inf", " 1", "1_0" and non-ASCII digits; stripping the decimal
    # characters from both ends leaves something for every one of those. It is the hot path of
    # every consumer, so no regular expression here; tests check it against DECIMAL.
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if text.strip(DECIMAL_CHARS) or not text or math.isnan(value):
        raise InvalidEntry(f"metric {name!r} must be a finite decimal number, got {_shown(text)}")
    if math.isinf(value):
        raise InvalidEntry(f"metric {name!r} is out of range, got {_shown(text)}")
    return value


def validate_sensor_id(sensor_id: str) -> str:
    if sensor_id in _valid_sensor_ids:
        return sensor_id
    if SENSOR_ID.fullmatch(sensor_id) is None:
        raise InvalidEntry(
            f"sensor_id must be 1-128 chars of A-Z a-z 0-9 _ . : -, got {_shown(sensor_id)}"
        )
    if len(_valid_sensor_ids) < _SENSOR_CACHE_LIMIT:
        _valid_sensor_ids.add(sensor_id)
    return sensor_id


def validate_metric_name(name: str) -> str:
    if name not in _valid_names:
        if METRIC_NAME.fullmatch(name) is None:
            raise InvalidEntry(f"field {_shown(name)} is not a valid metric name")
        if len(_valid_names) < _NAME_CACHE_LIMIT:
            _valid_names.add(name)
    return name


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made building
# one cost a fifth of decoding an entry. Nothing changes a Reading after decode.
@dataclass(slots=True)
class Reading:
    sensor_id: str
    ts_ms: int
    metrics: Mapping[str, float]
    seq: int | None = None
    # True when the entry carried no `ts` and the event time was taken from its ID.
    ts_from_entry_id: bool = field(default=False, compare=False)

    @classmethod
    def decode(cls, entry_id: str, fields: Mapping[str, str]) -> Reading:
        """Validate an entry's fields; InvalidEntry says how they break the contract."""
        if not fields:
            raise InvalidEntry("entry has no fields")
        sensor_id = fields.get("sensor_id")
        if sensor_id is None:
            raise InvalidEntry("sensor_id is missing")
        validate_sensor_id(sensor_id)
        ts_text = fields.get("ts")
        seq_text = fields.get("seq")
        metrics: dict[str, float] = {}
        for name, text in fields.items():
            if name in RESERVED or name[:1] == "_":
                continue
            if name not in _valid_names:
                validate_metric_name(name)
            metrics[name] = parse_metric_value(name, text)
        if not metrics:
            raise InvalidEntry("entry has no metrics")
        if ts_text is None:
            ts_ms, from_id = entry_time_ms(entry_id), True
        else:
            ts_ms, from_id = _unsigned("ts", ts_text), False
        seq = None if seq_text is None else _unsigned("seq", seq_text)
        return cls(sensor_id, ts_ms, metrics, seq, from_id)

    def encode(self) -> dict[str, str]:
        """Stream fields for this reading; `repr` keeps every float exact through a round trip."""
        fields = {"sensor_id": self.sensor_id, "ts": str(self.ts_ms)}
        if self.seq is not None:
            fields["seq"] = str(self.seq)
        for name, value in self.metrics.items():
            fields[name] = repr(float(value))
        return fields
