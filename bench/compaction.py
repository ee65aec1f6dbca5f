"""Reading a day of the archive as the flushes wrote it, then after the archiver merged it.

    python -m bench.compaction [--files N] [--rows R]

A day of 200 readings/s of two metrics flushed every 10 s is 8,640 files of 4,000 rows. The
same day is read three ways before and after merging: DuckDB over the folder (a count and a mean
per sensor, as the README shows), pyarrow reading the folder, and `telemetry export`'s path
(committed files, read one by one). The merge itself is timed too.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analytics.archive.compaction import compact
from analytics.archive.files import DAY_MS, SCHEMA, committed_parts, write_flush
from bench.common import print_table

DAY = 20_000 * DAY_MS  # 2024-10-04, long ended
SENSORS = 1000


def flushes(folder: Path, files: int, rows: int) -> str:
    """`files` flushes of `rows` rows through one day; the last entry ID."""
    rng = np.random.default_rng(5)
    step = DAY_MS // (files * rows)
    last = ""
    for i in range(files):
        index = np.arange(i * rows, (i + 1) * rows)
        ids = [f"{DAY + n * step}-0" for n in index]
        table = pa.table({
            "id": pa.array(ids, pa.string()),
            "sensor_id": pa.array([f"dev-{n % SENSORS:04d}" for n in index // 2], pa.string()),
            "ts": pa.array(DAY + index * step, pa.int64()),
            "seq": pa.array(index // 2, pa.int64()),
            "metric": pa.array(np.where(index % 2 == 0, "temp", "humidity"), pa.string()),
            "value": pa.array(rng.normal(20, 3, rows), pa.float64()),
        }, schema=SCHEMA)  # fmt: skip
        write_flush(folder, table, ids[0], ids[-1])
        last = ids[-1]
    return last


def on_disk(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("day=*/*.parquet"))


def timed(read: Callable[[], object]) -> float:
    started = time.perf_counter()
    read()
    return time.perf_counter() - started


def readers(folder: Path, committed: str) -> dict[str, Callable[[], object]]:
    pattern = f"{folder}/day=*/*.parquet"
    query = (f"select sensor_id, count(*), avg(value) from read_parquet('{pattern}', "
             "hive_partitioning = true) where metric = 'temp' group by all")  # fmt: skip
    return {
        "DuckDB, mean per sensor": lambda: duckdb.execute(query).fetchall(),
        "pyarrow, the whole folder": lambda: pq.read_table(folder),
        "export's path, file by file": lambda: [
            pq.read_table(path, schema=SCHEMA) for path in committed_parts(folder, committed)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8640)
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "app_event"
        started = time.perf_counter()
        committed = flushes(folder, args.files, args.rows)
        wrote_s = time.perf_counter() - started
        print(f"wrote {args.files} files of {args.rows} rows in {wrote_s:.0f} s")
        before = {name: timed(read) for name, read in readers(folder, committed).items()}
        bytes_before = on_disk(folder)
        started = time.perf_counter()
        merged = compact(folder, committed, DAY + 2 * DAY_MS, threading.Event())
        merge_s = time.perf_counter() - started
        after = {name: timed(read) for name, read in readers(folder, committed).items()}
        bytes_after = on_disk(folder)
        rows = [
            (name, f"{before[name]:.2f}", f"{after[name]:.2f}", f"{before[name] / after[name]:.1f}")
            for name in before
        ]
        print_table(["reading the day", f"{args.files} small files s", f"{merged} merged s",
                     "speed-up"], rows)  # fmt: skip
        total = args.files * args.rows
        print(
            f"merging: {merge_s:.1f} s, {total / merge_s:,.0f} rows/s; on disk "
            f"{bytes_before / total:.1f} bytes a row before, {bytes_after / total:.1f} after"
        )


if __name__ == "__main__":
    main()
