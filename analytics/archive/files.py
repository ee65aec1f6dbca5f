"""The archive's files: under the archive folder, a folder per stream, then one per day of the
readings' event time (`day=2026-12-06`, Hive style), then one Parquet file per flush of the
archive group, named by the first and last stream entry IDs of that flush.

A flush is committed when Redis records its last ID (`StreamKeys.archived`) together with the
acknowledgement of its entries; files of a flush not committed (the archiver died in between)
are removed when the archiver starts again, and readers ignore them meanwhile. Rows are one per
(reading, metric): `id`, `sensor_id`, `ts` (event time, ms), `seq` (null when absent), `metric`,
`value`. DuckDB reads them all with
`read_parquet('archive/*/day=*/*.parquet', hive_partitioning = true)`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.contract.columns import NO_SEQ, ReadingColumns
from ingest.contract.reading import entry_order

SCHEMA = pa.schema([
    ("id", pa.string()), ("sensor_id", pa.string()), ("ts", pa.int64()), ("seq", pa.int64()),
    ("metric", pa.string()), ("value", pa.float64()),
])  # fmt: skip
PART = re.compile(r"part-([0-9]+-[0-9]+)_([0-9]+-[0-9]+)\.parquet")
DAY_MS = 86_400_000


def stream_folder(root: Path, stream: str) -> Path:
    """`app:event` -> root/app_event; a shard's `app:event:{3}` -> root/app_event_3."""
    return root / re.sub(r"[^A-Za-z0-9_.-]+", "_", stream).strip("_")


def readings_table(columns: ReadingColumns) -> pa.Table:
    """A row per (reading, metric) of decoded readings."""
    row = columns.value_row
    seq = columns.seq[row]
    return pa.table({
        "id": pa.array(np.asarray(columns.ids, dtype=object)[row], pa.string()),
        "sensor_id": pa.array(np.asarray(columns.sensors, dtype=object)[columns.sensor[row]],
                              pa.string()),
        "ts": pa.array(columns.ts_ms[row], pa.int64()),
        "seq": pa.array(seq, pa.int64(), mask=seq == NO_SEQ),
        "metric": pa.array(np.asarray(columns.metric_names, dtype=object)[columns.value_metric],
                           pa.string()),
        "value": pa.array(columns.value, pa.float64()),
    }, schema=SCHEMA)  # fmt: skip


def write_flush(folder: Path, table: pa.Table, first_id: str, last_id: str) -> list[Path]:
    """Write one flush, a file per day of its rows' event time; each complete (written to a
    temporary name, synced, renamed) before this returns."""
    name = f"part-{first_id}_{last_id}.parquet"
    days = pc.divide(table["ts"], pa.scalar(DAY_MS, pa.int64()))
    written = []
    for day in sorted(set(days.to_pylist())):
        rows = table.filter(pc.equal(days, pa.scalar(day, pa.int64())))
        day_folder = folder / f"day={datetime.fromtimestamp(day * 86_400, UTC):%Y-%m-%d}"
        day_folder.mkdir(parents=True, exist_ok=True)
        temporary = day_folder / f".{name}.tmp"
        pq.write_table(rows, temporary, compression="zstd")
        with open(temporary, "rb") as written_file:
            os.fsync(written_file.fileno())
        final = day_folder / name
        temporary.rename(final)
        _sync_folder(day_folder)
        written.append(final)
    return written


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def parts(folder: Path) -> Iterator[tuple[Path, str, str]]:
    """Every flush file under a stream's folder: its path and first and last entry IDs."""
    for path in folder.glob("day=*/part-*.parquet"):
        match = PART.fullmatch(path.name)
        if match:
            yield path, match[1], match[2]


def committed_parts(folder: Path, committed: str) -> list[Path]:
    """The files of committed flushes (last ID at or before `committed`)."""
    limit = entry_order(committed)
    return sorted(path for path, _, last in parts(folder) if entry_order(last) <= limit)


def remove_uncommitted(folder: Path, committed: str) -> int:
    """Remove temporary files and the files of flushes after `committed`; how many."""
    limit = entry_order(committed)
    doomed = [path for path, _, last in parts(folder) if entry_order(last) > limit]
    doomed += list(folder.glob("day=*/.part-*.tmp"))
    for path in doomed:
        path.unlink()
    return len(doomed)
