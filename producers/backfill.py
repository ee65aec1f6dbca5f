"""Readings from files, for backfills: CSV, JSON lines, Parquet and Influx line protocol, decoded
by the same lenient rules as the bridge and POST /readings, written at the pace the consumer
groups take them (a writer held back by a group's backlog waits; nothing is trimmed unread).

CSV and Parquet come in two shapes: wide (a row per reading: `sensor_id`, `ts`, optional `seq`,
a column per metric, text columns as labels) or long, as `telemetry export` writes them (a row
per reading and metric: `id`, `sensor_id`, `ts`, `seq`, `metric`, `value`; a reading's rows are
consecutive). A JSON line is one reading object. An Influx line `measurement,tag=v field=1
1700000000000000000` is a reading of the sensor its `sensor_id` tag names (another tag with
--sensor-tag), its fields the metrics, its other tags labels, its timestamp in ns (--precision).
"""

from __future__ import annotations

import csv
import itertools
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq

from ingest.backoff import Backoff, why_writes_wait, write_waiting
from ingest.deadletter import dead_letter_record, queue_dead_letter
from ingest.devices import DeviceRegistry
from ingest.errors import InvalidEntry, RedisUnavailable, SettingsError
from ingest.keys import StreamKeys
from ingest.redis.connection import connect
from ingest.redis.errors import redis_errors
from ingest.redis.shardedwriter import open_writer
from ingest.settings import Settings
from ingest.shards import shards
from producers.backfillformats import FORMATS, PRECISIONS, SUFFIXES
from producers.lenient import lenient_reading, usual_reading
from producers.payload import Parsed

log = logging.getLogger(__name__)

CHUNK = 1000
# A line or row longer than this is refused unread: no reading needs it.
MAX_LINE = 65_536
LONG_COLUMNS = {"sensor_id", "ts", "metric", "value"}

# A record: where it is in the file (line or row number, from 1), and the reading it holds, or
# the reason it holds none.
Record = tuple[int, dict[str, Any] | str]
Advance = Callable[[int], None]


class BackfillError(SettingsError):
    """A file that cannot be imported at all; the message says what to fix."""


def detect_format(path: Path, given: str | None) -> str:
    if given is not None:
        return given
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise BackfillError(f"{path}: cannot tell the format from the name; give --format "
                           f"{'|'.join(FORMATS)}")  # fmt: skip
    return found


def records(path: Path, file_format: str, advance: Advance, *, sensor_tag: str = "sensor_id",
            precision: str = "ns") -> Iterator[Record]:  # fmt: skip
    """Every record of the file, in order; `advance` hears how far through it the reading is
    (bytes, or rows for Parquet)."""
    if file_format == "parquet":
        yield from _parquet_records(path, advance)
        return
    overlong: list[int] = []
    lines = _lines(path, advance, overlong)
    if file_format == "jsonl":
        found = _json_records(lines)
    elif file_format == "csv":
        found = _table_records(_csv_rows(lines, overlong))
    else:
        found = _influx_records(lines, sensor_tag, PRECISIONS[precision])
    for record in found:
        yield from _refused_lines(overlong)
        yield record
    yield from _refused_lines(overlong)


def _lines(path: Path, advance: Advance, overlong: list[int]) -> Iterator[tuple[int, str]]:
    """The file's lines, numbered from 1; a line past MAX_LINE bytes is left out (unread
    beyond its end) and its number added to `overlong`."""
    with path.open("rb") as raw:
        for number, line in enumerate(raw, start=1):
            advance(len(line))
            if len(line) > MAX_LINE:
                overlong.append(number)
                continue
            yield number, line.decode("utf-8", "replace").rstrip("\r\n")


def _refused_lines(overlong: list[int]) -> Iterator[Record]:
    while overlong:
        yield overlong.pop(0), f"the line is longer than {MAX_LINE} bytes"


def _influx_records(
    lines: Iterable[tuple[int, str]], sensor_tag: str, scale: int
) -> Iterator[Record]:
    for number, line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            yield number, influx_reading(line, sensor_tag, scale)


_json = msgspec.json.Decoder()


def _json_records(lines: Iterable[tuple[int, str]]) -> Iterator[Record]:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            item = _json.decode(line)
        except msgspec.DecodeError as exc:
            yield number, f"not JSON: {exc}"
            continue
        except RecursionError:
            yield number, "JSON nested too deeply"
            continue
        if isinstance(item, dict):
            # An exported reading's entry ID: it gets a new one.
            item.pop("id", None)
            yield number, item
        else:
            yield number, "a JSON line must be an object"


def _csv_rows(lines: Iterable[tuple[int, str]], overlong: list[int]) -> Iterator[Record]:
    at = [0]
    rows = csv.reader(_remembering(iter(lines), at))
    header = next(rows, None)
    if overlong[:1] == [1]:
        raise BackfillError(f"the header line is longer than {MAX_LINE} bytes")
    if header is None:
        return
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            yield at[0], f"not CSV: {exc}"
            continue
        yield at[0], dict(zip(header, row, strict=False))


def _remembering(lines: Iterator[tuple[int, str]], at: list[int]) -> Iterator[str]:
    for number, line in lines:
        at[0] = number
        yield line


def parquet_rows(path: Path) -> int:
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, ValueError) as exc:
        raise BackfillError(f"{path}: not a Parquet file ({exc})") from None


def _parquet_records(path: Path, advance: Advance) -> Iterator[Record]:
    source = pq.ParquetFile(path)
    numbered = itertools.count(1)

    def rows() -> Iterator[Record]:
        for batch in source.iter_batches(batch_size=CHUNK):
            for row in batch.to_pylist():
                yield next(numbered), row
            advance(batch.num_rows)

    yield from _table_records(rows())


def _table_records(rows: Iterator[Record]) -> Iterator[Record]:
    """Wide rows as they are; long rows gathered into readings; refusals passed on."""
    leading: list[Record] = []
    for record in rows:
        if isinstance(record[1], dict):
            first = record[1]
            everything = itertools.chain([record], rows)
            break
        leading.append(record)
    else:
        yield from leading
        return
    yield from leading
    if not set(first) >= LONG_COLUMNS:
        for number, row in everything:
            yield number, row if isinstance(row, str) else _counted({
                k: v for k, v in row.items() if v not in ("", None) and k != "id"})  # fmt: skip
        return
    current: dict[str, Any] | None = None
    current_key: tuple[Any, ...] | None = None
    started = 0
    for number, row in everything:
        if isinstance(row, str):
            yield number, row
            continue
        key = (row.get("id"), row["sensor_id"], row["ts"], row.get("seq"))
        if key != current_key:
            if current is not None:
                yield started, _counted(current)
            current_key, started = key, number
            current = {"sensor_id": row["sensor_id"], "ts": row["ts"]}
            if row.get("seq") not in ("", None):
                current["seq"] = row["seq"]
        assert current is not None
        current[str(row["metric"])] = row["value"]
    if current is not None:
        yield started, _counted(current)


def _counted(reading: dict[str, Any]) -> dict[str, Any]:
    """`ts` and `seq` written as text (CSV) as the integers they are: the rules take a
    sequence number only as one."""
    for name in ("ts", "seq"):
        value = reading.get(name)
        if isinstance(value, str) and value.isdigit():
            reading[name] = int(value)
    return reading


_UNESCAPED_SPACE = re.compile(r'(?<!\\) (?=(?:[^"]*"[^"]*")*[^"]*$)')
_UNESCAPED_COMMA = re.compile(r'(?<!\\),(?=(?:[^"]*"[^"]*")*[^"]*$)')
_UNESCAPED_EQUALS = re.compile(r"(?<!\\)=")


def _unescape(text: str) -> str:
    return re.sub(r"\\([ ,=\"\\])", r"\1", text)


def influx_reading(line: str, sensor_tag: str, scale: int) -> dict[str, Any] | str:
    """The reading of one line of Influx line protocol, or why it is not one."""
    parts = _UNESCAPED_SPACE.split(line.strip())
    if len(parts) not in (2, 3):
        return "an Influx line is: measurement,tags fields [timestamp]"
    series, fields = parts[0], parts[1]
    _measurement, *tags = _UNESCAPED_COMMA.split(series)
    reading: dict[str, Any] = {}
    for tag in tags:
        pieces = _UNESCAPED_EQUALS.split(tag, maxsplit=1)
        if len(pieces) != 2:
            return f"tag {tag[:40]!r} has no value"
        reading[_unescape(pieces[0])] = _unescape(pieces[1])
    if sensor_tag not in reading:
        return f"no {sensor_tag} tag (give the tag that names the sensor with --sensor-tag)"
    reading["sensor_id"] = reading.pop(sensor_tag)
    for item in _UNESCAPED_COMMA.split(fields):
        pieces = _UNESCAPED_EQUALS.split(item, maxsplit=1)
        if len(pieces) != 2:
            return f"field {item[:40]!r} has no value"
        reading[_unescape(pieces[0])] = _field_value(pieces[1])
    if len(parts) == 3:
        if not parts[2].isdigit():
            return f"timestamp {parts[2][:40]!r} is not an integer"
        stamp = int(parts[2])
        reading["ts"] = stamp // scale if scale else stamp * 1000
    return reading


def _field_value(text: str) -> Any:
    if text.startswith('"'):
        # String fields are text, which readings carry as labels.
        return _unescape(text[1:-1])
    if text[-1:] in ("i", "u") and text[:-1].lstrip("-").isdigit():
        return int(text[:-1])
    if text in ("t", "T", "true", "True", "TRUE"):
        return True
    if text in ("f", "F", "false", "False", "FALSE"):
        return False
    return text


@dataclass
class ImportCounts:
    records: int = 0
    written: int = 0
    refused: int = 0
    dropped_fields: int = 0
    waits: int = 0
    first_refusals: list[str] = field(default_factory=list)


class Backfill:
    """Decodes records in chunks and writes them, holding back while a group's backlog is full,
    dead-lettering each record that cannot be a reading with its place in the file."""

    def __init__(self, settings: Settings, source: str, stop: threading.Event) -> None:
        if settings.backlog_policy == "trim":
            # A backfill must never outrun the groups into trimming.
            settings = settings.replace(backlog_policy="backpressure")
        self.settings = settings
        self.source = source
        self.stop = stop
        self.writer = open_writer(settings)
        first = shards(settings)[0].settings
        self._dead_client = connect(first)
        self._dead_keys = StreamKeys(first.stream)
        self.registry = DeviceRegistry(settings)
        self.counts = ImportCounts()

    def run(self, found: Iterable[Record]) -> ImportCounts:
        chunk: list[Record] = []
        for record in found:
            chunk.append(record)
            if len(chunk) >= CHUNK:
                self._chunk(chunk)
                chunk = []
            if self.stop.is_set():
                break
        if chunk and not self.stop.is_set():
            self._chunk(chunk)
        return self.counts

    def _chunk(self, chunk: list[Record]) -> None:
        self.counts.records += len(chunk)
        parsed = Parsed()
        refused: list[tuple[int, str]] = []
        for number, item in chunk:
            problem = item if isinstance(item, str) else self._decode(item, parsed)
            if problem is not None:
                refused.append((number, problem))
        self.counts.dropped_fields += len(parsed.dropped)
        if parsed.notes:
            self.registry.note(parsed.notes)
        if refused:
            self._dead_letter(refused, chunk)
        if parsed.readings:
            self._write(parsed.readings)

    @staticmethod
    def _decode(item: dict[str, Any], parsed: Parsed) -> str | None:
        """Add the reading to `parsed`; or why it cannot be one. A backfilled reading keeps its
        own time or is refused: the time it is imported at would be wrong."""
        if item.get("ts") in ("", None):
            return "ts is missing: a backfill needs each reading's time"
        try:
            usual = usual_reading(None, item)
            if usual is not None:
                parsed.readings.append(usual)
                return None
            reading = lenient_reading(None, item)
        except InvalidEntry as exc:
            return exc.reason
        unusable = next((reason for name, reason in reading.dropped if name == "ts"), None)
        if unusable is not None:
            return f"ts: {unusable}"
        parsed.add(reading)
        return None

    def _write(self, readings: list[dict[str, str]]) -> None:
        if write_waiting(self.writer, readings, self.stop, Backoff(), self._waiting) is not None:
            self.counts.written += len(readings)

    def _waiting(self, failure: RedisUnavailable, _waits: int) -> None:
        self.counts.waits += 1
        if self.counts.waits == 1 or self.counts.waits % 100 == 0:
            log.info("%s; the import waits", why_writes_wait(failure))

    def _dead_letter(self, refused: list[tuple[int, str]], chunk: list[Record]) -> None:
        items = dict(chunk)
        self.counts.refused += len(refused)
        with redis_errors():
            pipe = self._dead_client.pipeline(transaction=False)
            for number, reason in refused:
                where = f"{self.source}:{number}: {reason}"
                if len(self.counts.first_refusals) < 5:
                    self.counts.first_refusals.append(where)
                item = items.get(number)
                fields = ({str(k): str(v) for k, v in item.items()}
                          if isinstance(item, dict) else None)  # fmt: skip
                record = dead_letter_record(self._dead_keys.stream, "import", "",
                                            "telemetry import", 1, where, fields)  # fmt: skip
                queue_dead_letter(pipe, self._dead_keys, self.settings.dead_letter_maxlen, record)
            pipe.execute()

    def close(self) -> None:
        self.writer.close()
