"""The archiver against a plain redis-py loop that writes the same Parquet files.

    python -m bench.archive [--readings N] [--rounds R]

1000 sensors with two metrics each, written to a stream. The archive group (GroupRunner, the
Archiver, its commit per flush of 100,000 readings) against a reference that only XRANGEs 2000
entries at a time, builds the same rows with pyarrow in a Python loop and writes a zstd Parquet
file per 100,000 readings: what any archiver has to do, without the group, the per-day split,
the sync and rename, or the commit. Beside the rates, the archive's bytes on disk per reading.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from analytics.archive.files import SCHEMA
from analytics.archive.worker import archiver_runner
from bench.common import print_table, redis_for_bench
from ingest.keys import StreamKeys
from ingest.redis.connection import connect, read_range_newest_first
from ingest.settings import Settings
from simulator.dataset import make_readings, write

FLUSH = 100_000
PAGE = 2000


def plain_loop(client: redis.Redis, stream: str, folder: Path) -> int:
    start, done, flushed = "-", 0, 0
    rows: list[list[Any]] = [[] for _ in SCHEMA.names]

    def flush() -> None:
        nonlocal rows, flushed
        table = pa.table(dict(zip(SCHEMA.names, rows, strict=True)), schema=SCHEMA)
        pq.write_table(table, folder / f"plain-{flushed}.parquet", compression="zstd")
        rows, flushed = [[] for _ in SCHEMA.names], flushed + 1

    while True:
        page: Any = client.xrange(stream, min=start, count=PAGE)
        if not page:
            break
        for entry_id, fields in page:
            sensor, ts, seq = fields["sensor_id"], int(fields["ts"]), fields.get("seq")
            for name, value in fields.items():
                if name not in ("sensor_id", "ts", "seq"):
                    for column, cell in zip(rows, (entry_id, sensor, ts, seq and int(seq), name,
                                                   float(value)), strict=True):  # fmt: skip
                        column.append(cell)
            done += 1
            if done % FLUSH == 0:
                flush()
        start = f"({page[-1][0]}"
    if rows[0]:
        flush()
    return done


def archive(settings: Settings) -> int:
    """Run the archive group until every entry is committed, flushing what is held once the
    group has read everything (as the archiver's clock does); the readings in the files."""
    client = connect(settings)
    runner, archiver = archiver_runner(client, settings, drain=False)
    stop = threading.Event()
    running = threading.Thread(target=runner.run, args=(stop,))
    running.start()
    newest = read_range_newest_first(client, settings.stream, count=1)[0][0]
    while client.get(StreamKeys(settings.stream).archived) != newest:
        if client.xinfo_groups(settings.stream)[0]["lag"] == 0:
            archiver.flush_if_due(force=True)
        time.sleep(0.01)
    stop.set()
    running.join()
    ids = pq.read_table(settings.archive_dir, columns=["id"])["id"]
    return len(pc.unique(ids))


def timed(
    rates: dict[str, list[float]], sizes: dict[str, list[int]], name: str, readings: int,
    folder: Path, run: Callable[[], int],
) -> None:  # fmt: skip
    started = time.perf_counter()
    count = run()
    elapsed = time.perf_counter() - started
    assert count == readings, (name, count)
    rates[name].append(count / elapsed)
    sizes[name].append(folder_bytes(folder))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    readings = args.readings // FLUSH * FLUSH
    rates: dict[str, list[float]] = {"plain redis-py + pyarrow": [], "archive group": []}
    sizes: dict[str, list[int]] = {name: [] for name in rates}
    with redis_for_bench() as url, tempfile.TemporaryDirectory() as scratch:
        client = redis.Redis.from_url(url, decode_responses=True)
        for round_no in range(args.rounds):
            client.flushall()
            settings = Settings(redis_url=url, read_batch=PAGE,
                                archive_dir=str(Path(scratch) / f"archive-{round_no}"),
                                archive_flush_readings=FLUSH)  # fmt: skip
            write(client, make_readings(1000, readings // 1000, 1, seed=round_no))
            plain = Path(scratch) / f"plain-{round_no}"
            plain.mkdir()
            timed(
                rates,
                sizes,
                "plain redis-py + pyarrow",
                readings,
                plain,
                partial(plain_loop, client, settings.stream, plain),
            )
            timed(rates, sizes, "archive group", readings, Path(settings.archive_dir),
                  partial(archive, settings))  # fmt: skip
    base = statistics.median(rates["plain redis-py + pyarrow"])
    print(f"{readings:,} readings (1000 sensors, 2 metrics each), median of {args.rounds} rounds")
    print_table(
        ["method", "readings/s", "ratio", "bytes on disk per reading"],
        [(name, f"{statistics.median(r):,.0f}", f"{statistics.median(r) / base:.2f}",
          f"{statistics.median(sizes[name]) / readings:.1f}") for name, r in rates.items()],
    )  # fmt: skip


if __name__ == "__main__":
    main()
