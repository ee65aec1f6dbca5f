"""Merging a day's small flush files into larger ones.

At a low rate each flush writes a small file (200 readings/s flushed every 10 s: 8,640 files of
4,000 rows a day), and readers pay per file. The archiver merges runs of consecutive committed
small files of a day into one file named by the run's first and last entry IDs: once the run
holds half of FILE_ROWS, or whatever is left once the day has ended (and DAY_GRACE_MS more).

A merged file is written whole (temporary name, sync, rename) before its sources are removed, so
a crash in between leaves sources whose ID range lies inside the merged file's: readers skip such
files (`files.covered`) and the archiver removes them when it starts again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from analytics.archive.files import (
    DAY_MS,
    SCHEMA,
    Part,
    committed_parts_of_day,
    day_of_folder,
    part_name,
    sync_folder,
    synced_rename,
)

log = logging.getLogger(__name__)

# Rows a merged file holds at most: about 7 MB on disk (6.6 bytes a row), some 60 MB in
# memory read whole.
FILE_ROWS = 1_000_000
# A day is left alone for this long after it ends, while late readings may still come.
DAY_GRACE_MS = 3_600_000


def compact(
    folder: Path, committed: str, now_ms: int, stop: threading.Event, file_rows: int = FILE_ROWS
) -> int:
    """Merge the due runs of every day under a stream's folder, until done or stopped; how many
    merged files were written."""
    merged = 0
    for day_folder in sorted(folder.glob("day=*")):
        ended = (day_of_folder(day_folder.name) + 1) * DAY_MS + DAY_GRACE_MS <= now_ms
        found = committed_parts_of_day(day_folder, committed)
        if len(found) < 2:
            continue
        for run in due_runs(found, file_rows, ended=ended):
            if stop.is_set():
                return merged
            merged += merge(day_folder, run) is not None
    return merged


def due_runs(parts: Sequence[Part], file_rows: int, *, ended: bool) -> list[list[Part]]:
    """Runs of consecutive small files (under a quarter of `file_rows` each) of at most
    `file_rows` rows, due once they hold half of it or, when the day has ended, at two files."""
    runs: list[list[Part]] = []
    run: list[Part] = []
    rows = 0

    def close() -> None:
        if len(run) >= 2 and (ended or rows >= file_rows // 2):
            runs.append(list(run))
        run.clear()

    for part in parts:
        try:
            size = pq.ParquetFile(part.path).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            # Left where it is, for a person to look at (export names it): runs go around it.
            log.warning("archive file %s cannot be read (%s); not merged", part.path, exc)
            size = file_rows
        if size >= file_rows // 4 or rows + size > file_rows:
            close()
            rows = 0
        if size < file_rows // 4:
            run.append(part)
            rows += size
    close()
    return runs


def merge(day_folder: Path, run: Sequence[Part]) -> Path | None:
    """One file holding the run's rows in order, in place of the run's files; None when one of
    them cannot be read (they stay)."""
    started = time.monotonic()
    name = part_name(run[0].first, run[-1].last)
    temporary = day_folder / f".{name}.tmp"
    try:
        with pq.ParquetWriter(temporary, SCHEMA, compression="zstd") as writer:
            for part in run:
                writer.write_table(pq.read_table(part.path, schema=SCHEMA))
    except (OSError, pa.ArrowException) as exc:
        temporary.unlink(missing_ok=True)
        log.warning("archive files of %s cannot be merged (%s); left as they are",
                    day_folder.name, exc)  # fmt: skip
        return None
    merged = synced_rename(temporary, day_folder / name)
    for part in run:
        part.path.unlink()
    sync_folder(day_folder)
    log.info("merged %d archive files of %s into %s in %.1f s", len(run), day_folder.name, name,
             time.monotonic() - started)  # fmt: skip
    return merged
