"""The archive's files: under the archive folder, a folder per stream, then one per day of the
readings' event time (`day=2026-12-06`, Hive style), then one Parquet file per flush of the
archive group, named by the first and last stream entry IDs of that flush (or of a run of such
files merged into one, compaction.py).

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


def part_name(first_id: str, last_id: str) -> str:
    return f"part-{first_id}_{last_id}.parquet"


def day_folder_name(day: int) -> str:
    """The folder of day number `day` (days since the epoch, UTC)."""
    return f"day={datetime.fromtimestamp(day * 86_400, UTC):%Y-%m-%d}"


def day_of_folder(name: str) -> int:
    """`day=2026-12-06` -> its day number."""
    day = datetime.strptime(name.removeprefix("day="), "%Y-%m-%d").replace(tzinfo=UTC)
    return int(day.timestamp() * 1000) // DAY_MS


def write_flush(folder: Path, table: pa.Table, first_id: str, last_id: str) -> list[Path]:
    """Write one flush, a file per day of its rows' event time; each complete (written to a
    temporary name, synced, renamed) before this returns."""
    name = part_name(first_id, last_id)
    days = pc.divide(table["ts"], pa.scalar(DAY_MS, pa.int64()))
    written = []
    for day in sorted(set(days.to_pylist())):
        rows = table.filter(pc.equal(days, pa.scalar(day, pa.int64())))
        day_folder = folder / day_folder_name(day)
        day_folder.mkdir(parents=True, exist_ok=True)
        temporary = day_folder / f".{name}.tmp"
        pq.write_table(rows, temporary, compression="zstd")
        written.append(synced_rename(temporary, day_folder / name))
    return written


def synced_rename(temporary: Path, final: Path) -> Path:
    """Give a written file its final name once its bytes, then the name, are on disk."""
    with open(temporary, "rb") as written_file:
        os.fsync(written_file.fileno())
    temporary.rename(final)
    sync_folder(final.parent)
    return final


def sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class Part:
    """An archive file: a flush's rows of one day, or a merged run of such files."""

    path: Path
    first: str
    last: str


def parts(folder: Path, pattern: str = "day=*/part-*.parquet") -> Iterator[Part]:
    """Every archive file under a stream's folder (or matching `pattern` there)."""
    for path in folder.glob(pattern):
        match = PART.fullmatch(path.name)
        if match:
            yield Part(path, match[1], match[2])


def covered(found: Iterable[Part]) -> list[Part]:
    """Files whose ID range lies inside another file's of the same day: the sources of a merge
    that a crash left behind. Sorted, a day's ranges are disjoint but for these."""
    doomed = []
    by_day: dict[Path, list[Part]] = {}
    for part in found:
        by_day.setdefault(part.path.parent, []).append(part)
    for day in by_day.values():
        day.sort(key=lambda part: (entry_order(part.first), _reversed(entry_order(part.last))))
        reach: tuple[int, int] | None = None
        for part in day:
            if reach is not None and entry_order(part.last) <= reach:
                doomed.append(part)
            else:
                reach = entry_order(part.last)
    return doomed


def _reversed(order: tuple[int, int]) -> tuple[int, int]:
    return -order[0], -order[1]


def committed_parts_of_day(day_folder: Path, committed: str) -> list[Part]:
    """A day's files of committed flushes (last ID at or before `committed`), in ID order,
    without the sources of a merge that a crash left behind."""
    limit = entry_order(committed)
    found = [
        part for part in parts(day_folder, "part-*.parquet") if entry_order(part.last) <= limit
    ]
    doomed = {part.path for part in covered(found)}
    kept = [part for part in found if part.path not in doomed]
    return sorted(kept, key=lambda part: entry_order(part.first))


def committed_parts(folder: Path, committed: str) -> list[Path]:
    """The files of committed flushes (last ID at or before `committed`), day by day."""
    return [
        part.path
        for day_folder in sorted(folder.glob("day=*"))
        for part in committed_parts_of_day(day_folder, committed)
    ]


def remove_uncommitted(folder: Path, committed: str) -> int:
    """Remove temporary files, the files of flushes after `committed` and the sources of a
    merge left behind; how many."""
    limit = entry_order(committed)
    found = list(parts(folder))
    doomed = {part.path for part in found if entry_order(part.last) > limit}
    doomed |= {part.path for part in covered(found)}
    doomed |= set(folder.glob("day=*/.part-*.tmp"))
    for path in doomed:
        path.unlink()
    return len(doomed)
