"""The Sparkplug B payload (protobuf), decoded from its wire format (pure).

Only what a host application reading telemetry needs: the payload's timestamp and `seq`, and per
metric its name, alias, timestamp, datatype, whether it is null, and its value when that is a
number, a boolean or a string (datasets, templates, arrays and bytes are skipped). Signed
integers arrive as two's complement in unsigned fields (Sparkplug B 3.0, 6.4.16).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Metrics one payload may hold; a payload with more is refused.
MAX_METRICS = 10_000

# Payload fields.
_TIMESTAMP, _METRICS, _SEQ = 1, 2, 3
# Metric fields.
_NAME, _ALIAS, _M_TIMESTAMP, _DATATYPE, _IS_NULL = 1, 2, 3, 4, 7
_INT, _LONG, _FLOAT, _DOUBLE, _BOOLEAN, _STRING = 10, 11, 12, 13, 14, 15
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
DATETIME = 13
_SIGNED_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}


class WireError(ValueError):
    """A payload that is not a Sparkplug B protobuf."""


@dataclass
class Metric:
    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int = 0
    is_null: bool = False
    value: float | bool | str | None = None
    # An integer value as sent: signed types arrive as two's complement, so what it means
    # depends on the datatype, which data messages may leave to the birth (see `number`).
    integer: int | None = None

    def resolve(self, datatype: int) -> None:
        """Set `value` from `integer` for the datatype given (the metric's own, else the
        birth's); a DateTime is not a reading."""
        self.datatype = self.datatype or datatype
        if self.integer is None or self.datatype == DATETIME:
            return
        integer = self.integer
        bits = _SIGNED_BITS.get(self.datatype)
        if bits is not None:
            integer &= (1 << bits) - 1
            if integer >= 1 << (bits - 1):
                integer -= 1 << bits
        self.value = float(integer)


@dataclass
class Payload:
    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)


def decode_payload(data: bytes) -> Payload:
    payload = Payload()
    for number, value in _fields(data):
        if number == _TIMESTAMP and isinstance(value, int):
            payload.timestamp = value
        elif number == _SEQ and isinstance(value, int):
            payload.seq = value
        elif number == _METRICS and isinstance(value, bytes):
            if len(payload.metrics) >= MAX_METRICS:
                raise WireError(f"more than {MAX_METRICS} metrics in one payload")
            payload.metrics.append(_metric(value))
    return payload


def _metric(data: bytes) -> Metric:
    metric = Metric()
    for number, value in _fields(data):
        if number == _NAME and isinstance(value, bytes):
            metric.name = _text(value)
        elif number == _ALIAS and isinstance(value, int):
            metric.alias = value
        elif number == _M_TIMESTAMP and isinstance(value, int):
            metric.timestamp = value
        elif number == _DATATYPE and isinstance(value, int):
            metric.datatype = value
        elif number == _IS_NULL and isinstance(value, int):
            metric.is_null = bool(value)
        elif number in (_INT, _LONG) and isinstance(value, int):
            metric.integer = value
        elif number in (_FLOAT, _DOUBLE) and isinstance(value, float):
            metric.value = value
        elif number == _BOOLEAN and isinstance(value, int):
            metric.value = bool(value)
        elif number == _STRING and isinstance(value, bytes):
            metric.value = _text(value)
    return metric


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("a string is not UTF-8") from None


def _fields(data: bytes) -> list[tuple[int, int | float | bytes]]:
    """(field number, value) of each field: varints as int, fixed32 as float (Sparkplug's only
    fixed32 is a float), fixed64 as double, length-delimited as bytes."""
    found: list[tuple[int, int | float | bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            if pos < end and data[pos] < 0x80:
                found.append((number, data[pos]))
                pos += 1
                continue
            value, pos = _varint(data, pos)
            found.append((number, value))
        elif wire == 1:
            if pos + 8 > end:
                raise WireError("truncated 64-bit field")
            found.append((number, struct.unpack_from("<d", data, pos)[0]))
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise WireError("truncated 32-bit field")
            found.append((number, struct.unpack_from("<f", data, pos)[0]))
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise WireError("truncated length-delimited field")
            found.append((number, data[pos : pos + length]))
            pos += length
        else:
            raise WireError(f"unsupported protobuf wire type {wire}")
    return found


def encode_varint(value: int) -> bytes:
    """A non-negative integer as a protobuf varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 64 bits")
