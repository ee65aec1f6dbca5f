"""Raw readings between two times, from the archive's committed files and then the stream
entries after the last committed flush (so each reading comes once, whichever holds it), written
as Parquet (the archive's own rows), CSV (the same columns) or JSON lines (one reading a line).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import redis

from analytics.archive.files import (
    DAY_MS,
    SCHEMA,
    committed_parts,
    day_of_folder,
    readings_table,
    stream_folder,
)
from ingest.contract.columns import decode_columns
from ingest.keys import StreamKeys
from ingest.redis.connection import as_text, connect, read_range
from ingest.redis.errors import redis_errors
from ingest.settings import Settings
from ingest.shards import shards

PAGE = 10_000


@dataclass(frozen=True)
class Source:
    """One place readings come from: an archive file, or a stream after its archived part."""

    name: str
    read: Callable[[], pa.Table]


def sources(settings: Settings, since_ms: int, until_ms: int, sensor_glob: str) -> list[Source]:
    """Where the readings in [since_ms, until_ms) of sensors matching the glob are, in order."""
    found: list[Source] = []
    first_day, last_day = since_ms // DAY_MS, (until_ms - 1) // DAY_MS
    for shard in shards(settings):
        client = connect(shard.settings)
        keys = StreamKeys(shard.stream)
        with redis_errors():
            committed = as_text(client.get(keys.archived) or "0-0")
        folder = stream_folder(Path(settings.archive_dir), shard.stream)
        for path in committed_parts(folder, committed) if folder.exists() else []:
            day = day_of_folder(path.parent.name)
            if first_day <= day <= last_day:
                found.append(Source(str(path), _file_reader(path, since_ms, until_ms, sensor_glob)))
        unarchived = _stream_reader(client, shard.stream, committed, since_ms, until_ms,
                                    sensor_glob)  # fmt: skip
        found.append(Source(f"{shard.stream} after {committed}", unarchived))
    return found


def _selected(table: pa.Table, since_ms: int, until_ms: int, sensor_glob: str) -> pa.Table:
    keep = pc.and_(pc.greater_equal(table["ts"], since_ms), pc.less(table["ts"], until_ms))
    if sensor_glob != "*":
        keep = pc.and_(keep, pc.match_substring_regex(table["sensor_id"], glob_regex(sensor_glob)))
    return table.filter(keep)


def glob_regex(glob: str) -> str:
    """A glob (`*`, `?`, `[...]`) as an anchored RE2 expression, which Arrow matches with."""
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        closing = glob.find("]", i + 2) if char == "[" else -1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif closing > 0:
            inside = glob[i + 1 : closing]
            out.append("[" + ("^" + inside[1:] if inside.startswith("!") else inside) + "]")
            i = closing
        else:
            out.append(re.escape(char))
        i += 1
    return "^" + "".join(out) + "$"


def _file_reader(
    path: Path, since_ms: int, until_ms: int, sensor_glob: str
) -> Callable[[], pa.Table]:
    return lambda: _selected(pq.read_table(path, schema=SCHEMA), since_ms, until_ms, sensor_glob)


def _stream_reader(
    client: redis.Redis, stream: str, after: str, since_ms: int, until_ms: int, sensor_glob: str
) -> Callable[[], pa.Table]:
    """The entries of the stream after `after`, read through the shard's client."""

    def read() -> pa.Table:
        tables, start = [], f"({after}" if after != "0-0" else "-"
        while True:
            with redis_errors():
                page = read_range(client, stream, start, "+", count=PAGE)
            if not page:
                break
            flat = [[item for pair in fields.items() for item in pair] for _, fields in page]
            columns, _ = decode_columns([entry_id for entry_id, _ in page], flat)
            tables.append(_selected(readings_table(columns), since_ms, until_ms, sensor_glob))
            start = f"({page[-1][0]}"
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

    return read


class Output:
    """Rows written to a file in one of EXPORT_FORMATS (parquet, csv, jsonl)."""

    def __init__(self, path: Path, output_format: str) -> None:
        self.format = output_format
        self.rows = 0
        self.readings = 0
        self._parquet: pq.ParquetWriter | None = None
        self._csv: pcsv.CSVWriter | None = None
        self._text: IO[str] | None = None
        if output_format == "parquet":
            self._parquet = pq.ParquetWriter(path, SCHEMA, compression="zstd")
        elif output_format == "csv":
            self._csv = pcsv.CSVWriter(str(path), SCHEMA)
        else:
            self._text = path.open("w", encoding="utf-8")

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if self._parquet is not None:
            self._parquet.write_table(table)
        elif self._csv is not None:
            self._csv.write_table(table)
        if self._text is not None:
            for reading in readings_of(table):
                self._text.write(json.dumps(reading) + "\n")
                self.readings += 1
        else:
            self.readings += len(pc.unique(table["id"]))

    def close(self) -> None:
        for closing in (self._parquet, self._csv, self._text):
            if closing is not None:
                closing.close()


def readings_of(table: pa.Table) -> Iterator[dict[str, Any]]:
    """The readings of archive rows (a reading's rows are consecutive), as the stream had
    them: sensor_id, ts, seq when present, then the metrics."""
    columns = table.to_pydict()
    current: dict[str, Any] | None = None
    current_id = None
    for entry_id, sensor, ts, seq, metric, value in zip(
        columns["id"], columns["sensor_id"], columns["ts"], columns["seq"], columns["metric"],
        columns["value"], strict=True,
    ):  # fmt: skip
        if entry_id != current_id:
            if current is not None:
                yield current
            current_id = entry_id
            current = {"id": entry_id, "sensor_id": sensor, "ts": ts}
            if seq is not None:
                current["seq"] = seq
        assert current is not None
        current[metric] = value if math.isfinite(value) else None
    if current is not None:
        yield current
