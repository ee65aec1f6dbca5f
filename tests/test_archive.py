"""The archive group writes every reading to Parquet exactly once through kill -9 (checked with
DuckDB and pyarrow); export reads the archive and the stream together in every format; import
takes CSV, JSON lines, Parquet and Influx line protocol, dead-letters what cannot be a reading
with its line, and waits for the groups rather than outrun them into trimming."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis

from analytics.archive import GROUP
from analytics.archive.compaction import compact, merge
from analytics.archive.files import DAY_MS, committed_parts_of_day, covered, parts
from ingest.redis.connection import read_range
from ingest.settings import Settings
from tests.conftest import child_env

METRICS = ("temp", "humidity")
T0 = 1_796_000_000_000


def reading(i: int) -> dict[str, str]:
    """Reading i: sensor i % 7, a second apart per sensor, spread over two days."""
    return {"sensor_id": f"s{i % 7}", "ts": str(T0 + (i // 7) * 37_000), "seq": str(i // 7),
            "temp": repr(20 + (i % 97) / 8), "humidity": repr((i % 13) / 13)}  # fmt: skip


def write(client: redis.Redis, stream: str, first: int, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(first, first + count):
        pipe.xadd(stream, reading(i))  # type: ignore[arg-type]
    pipe.execute()


def telemetry(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "telemetry", *args],
                          env=child_env(settings, **env), capture_output=True, text=True,
                          timeout=180)  # fmt: skip


def archiver_process(settings: Settings) -> subprocess.Popen[bytes]:
    """`telemetry archive` running until stopped or killed."""
    return subprocess.Popen([sys.executable, "-m", "telemetry", "archive"],
                            env=child_env(settings), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def first_row(query: str) -> tuple[object, ...]:
    result = duckdb.sql(query)
    assert result is not None
    return tuple(result.fetchall()[0])


def archive_glob(root: Path) -> str:
    return str(root / "*" / "day=*" / "*.parquet")


@pytest.fixture
def archived(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    yield settings.replace(archive_dir=str(tmp_path / "archive"), archive_flush_ms=200,
                           archive_flush_readings=1500)  # fmt: skip


def test_every_reading_is_archived_once_through_kill_9(
    archived: Settings, client: redis.Redis
) -> None:
    settings, total = archived, 24_000
    rng = random.Random(7)
    worker: subprocess.Popen[bytes] | None = None
    written, commits = 0, []
    try:
        for _ in range(3):
            worker = archiver_process(settings)
            before = client.get(f"{settings.stream}:archived")
            write(client, settings.stream, written, 2000)
            written += 2000
            deadline = time.monotonic() + 30
            while client.get(f"{settings.stream}:archived") == before:
                assert time.monotonic() < deadline, "the archiver committed nothing"
                time.sleep(0.02)
            commits.append(client.get(f"{settings.stream}:archived"))
            for _ in range(3):
                write(client, settings.stream, written, 2000)
                written += 2000
                time.sleep(rng.uniform(0.05, 0.3))
            # Killed wherever it is: reading, writing a file, between the rename and the commit.
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
        write(client, settings.stream, written, total - written)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
    assert len(set(commits)) == 3  # each archiver committed flushes before it was killed
    done = telemetry(settings, "archive", "--drain")
    assert done.returncode == 0, done.stderr
    assert client.xpending(settings.stream, GROUP)["pending"] == 0
    root = Path(settings.archive_dir)
    assert not list(root.glob("*/day=*/.*.tmp"))
    counts = first_row(
        f"select count(*), count(distinct id), count(distinct id || metric), "
        f"count(distinct day) from read_parquet('{archive_glob(root)}', hive_partitioning=true)"
    )  # fmt: skip
    assert counts == (total * len(METRICS), total, total * len(METRICS), 2)
    table = pq.read_table(str(root))
    expected = sum(float(reading(i)["temp"]) for i in range(total))
    temps = table.filter(pc.equal(table["metric"], "temp"))["value"].to_pylist()
    assert sum(temps) == pytest.approx(expected, rel=1e-12)
    # Each file holds the rows of one day of event time.
    days = first_row(
        f"select count(*) from read_parquet('{archive_glob(root)}', hive_partitioning=true) "
        "where strftime(to_timestamp(ts / 1000), '%Y-%m-%d') <> day"
    )  # fmt: skip
    assert days == (0,)
    newest = read_range(client, settings.stream)[-1][0]
    assert client.get(f"{settings.stream}:archived") == newest


def archive_files(root: Path) -> dict[str, int]:
    """Files per day folder."""
    found: dict[str, int] = {}
    for path in root.glob("*/day=*/part-*.parquet"):
        found[path.parent.name] = found.get(path.parent.name, 0) + 1
    return found


def assert_archived_once(root: Path, total: int) -> None:
    counts = first_row(
        f"select count(*), count(distinct id || metric) "
        f"from read_parquet('{archive_glob(root)}', hive_partitioning=true)"
    )  # fmt: skip
    assert counts == (total * len(METRICS), total * len(METRICS))


def small_files(settings: Settings, client: redis.Redis, total: int) -> Settings:
    """`total` readings archived twenty at a time by an archiver that then stops (a stopped
    archiver merges nothing on its way out): many small files over two ended days."""
    small = settings.replace(archive_flush_readings=20, read_batch=20, reads_per_batch=1)
    write(client, small.stream, 0, total)
    last = read_range(client, small.stream)[-1][0]
    worker = archiver_process(small)
    try:
        deadline = time.monotonic() + 60
        while client.get(f"{small.stream}:archived") != last:
            assert time.monotonic() < deadline, "the archiver did not catch up"
            time.sleep(0.05)
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
    return small


def test_small_files_of_ended_days_are_merged_and_read_once_through_kill_9(
    archived: Settings, client: redis.Redis, tmp_path: Path
) -> None:
    total = 12_000
    settings = small_files(archived, client, total)
    root = Path(settings.archive_dir)
    assert sum(archive_files(root).values()) >= 20
    # Each archiver merges as it starts: killed once its merge is under way, each a little later
    # into it than the one before, until a merge is left complete.
    rng = random.Random(3)
    for delay in sorted(rng.uniform(0.0, 4.0) for _ in range(4)):
        worker = archiver_process(settings)
        deadline = time.monotonic() + 30
        while not list(root.glob("*/day=*/.*.tmp")) and sum(archive_files(root).values()) > 1:
            assert time.monotonic() < deadline, "the archiver merged nothing"
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        export = tmp_path / "export.parquet"
        done = telemetry(settings, "export", "--since", str(T0), "--until", str(T0 + 3 * DAY_MS),
                         "-o", str(export))  # fmt: skip
        # Whatever the kill left, an export reads each reading once.
        assert done.returncode == 0, done.stderr
        assert first_row(f"select count(distinct id), count(*) from read_parquet('{export}')") == (
            total,
            total * len(METRICS),
        )
    done = telemetry(settings, "archive", "--drain")
    assert done.returncode == 0, done.stderr
    assert set(archive_files(root).values()) == {1}
    assert not list(root.glob("*/day=*/.*.tmp"))
    assert_archived_once(root, total)


def test_the_sources_of_a_merge_left_by_a_crash_are_skipped_then_removed(
    archived: Settings, client: redis.Redis, tmp_path: Path
) -> None:
    settings = small_files(archived, client, 3000)
    root = Path(settings.archive_dir)
    committed = str(client.get(f"{settings.stream}:archived"))
    day_folder = sorted(root.glob("*/day=*"))[0]
    run = committed_parts_of_day(day_folder, committed)
    saved = {part.path: part.path.read_bytes() for part in run}
    # The state of a crash after the merged file's rename, before its sources' removal.
    merged = merge(day_folder, run)
    for path, data in saved.items():
        path.write_bytes(data)
    assert [part.path for part in committed_parts_of_day(day_folder, committed)] == [merged]
    assert sorted(part.path for part in covered(parts(day_folder.parent))) == sorted(saved)
    done = telemetry(settings, "export", "--since", str(T0), "--until", str(T0 + 3 * DAY_MS),
                     "-o", str(tmp_path / "export.parquet"))  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("3000 readings"), done.stderr
    done = telemetry(settings, "archive", "--drain")
    assert done.returncode == 0, done.stderr
    assert not any(path.exists() for path in saved)
    assert_archived_once(root, 3000)


def test_a_damaged_file_is_left_alone_and_the_rest_merged_around_it(
    archived: Settings, client: redis.Redis
) -> None:
    settings = small_files(archived, client, 3000)
    root = Path(settings.archive_dir)
    committed = str(client.get(f"{settings.stream}:archived"))
    day_folder = sorted(root.glob("*/day=*"))[0]
    found = committed_parts_of_day(day_folder, committed)
    assert len(found) >= 5
    damaged = found[len(found) // 2].path
    damaged.write_bytes(damaged.read_bytes()[:100])
    done = telemetry(settings, "archive", "--drain")
    assert done.returncode == 0, done.stderr
    assert damaged.name in done.stderr and "not merged" in done.stderr
    # The files before it and after it, each merged into one; it stays for a person.
    assert [part.path for part in committed_parts_of_day(day_folder, committed)][1] == damaged
    assert archive_files(root) == {day_folder.name: 3}


def test_a_day_still_going_is_merged_only_in_runs_of_half_a_file(
    archived: Settings, client: redis.Redis
) -> None:
    settings = small_files(archived, client, 3000)
    folder = next(Path(settings.archive_dir).iterdir())
    committed = str(client.get(f"{settings.stream}:archived"))
    before = archive_files(folder.parent)
    assert len(before) == 1 and sum(before.values()) >= 5
    during_the_day, never = T0 + 1000, threading.Event()
    # Its 6,000 rows are under half of 16,000: nothing is due while the day goes on ...
    assert compact(folder, committed, during_the_day, never, file_rows=16_000) == 0
    assert archive_files(folder.parent) == before
    # ... they are half of 12,000: one run, merged into one file ...
    assert compact(folder, committed, during_the_day, never, file_rows=12_000) == 1
    assert archive_files(folder.parent) == dict.fromkeys(before, 1)
    # ... which holds over a quarter of that, so it is never merged again.
    assert compact(folder, committed, during_the_day, never, file_rows=12_000) == 0
    assert_archived_once(folder.parent, 3000)


def test_export_reads_archive_and_stream_together_in_each_format(
    archived: Settings, client: redis.Redis, tmp_path: Path
) -> None:
    settings = archived
    write(client, settings.stream, 0, 3000)
    assert telemetry(settings, "archive", "--drain").returncode == 0
    # These are in the stream only.
    write(client, settings.stream, 3000, 1000)
    since, until = T0 + 10_000_000, T0 + 20_000_000
    wanted = [
        reading(i)
        for i in range(4000)
        if since <= int(reading(i)["ts"]) < until and reading(i)["sensor_id"] in ("s1", "s2")
    ]
    assert any(int(r["seq"]) > 3000 // 7 for r in wanted)  # some come from the stream
    for output_format in ("parquet", "csv", "jsonl"):
        out = tmp_path / f"out.{output_format}"
        window = ["--since", str(since), "--until", str(until), "--sensor", "s[12]"]
        done = telemetry(settings, "export", *window, "--format", output_format, "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{len(wanted)} readings ({2 * len(wanted)} values)")
        if output_format == "jsonl":
            lines = [json.loads(line) for line in out.read_text().splitlines()]
            got = sorted((r["sensor_id"], r["seq"], r["temp"], r["humidity"]) for r in lines)
            assert got == sorted((r["sensor_id"], int(r["seq"]), float(r["temp"]),
                                  float(r["humidity"])) for r in wanted)  # fmt: skip
        else:
            reader = "read_parquet" if output_format == "parquet" else "read_csv"
            counted = first_row(f"select count(distinct id), count(*) from {reader}('{out}')")
            assert counted == (len(wanted), 2 * len(wanted))
    # A day with nothing: an empty file, not an error.
    empty = telemetry(settings, "export", "--since", "2020-01-01", "--until", "2020-01-02",
                      "-o", str(tmp_path / "none.parquet"))  # fmt: skip
    assert empty.returncode == 0 and empty.stdout.startswith("0 readings")
    bad = telemetry(settings, "export", "--since", "last tuesday")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    # An archive file damaged on disk: named, in one line.
    damaged = next(Path(settings.archive_dir).glob("*/day=*/part-*.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:100])
    broken = telemetry(settings, "export", "--since", str(since), "--until", str(until),
                       "-o", str(tmp_path / "x.parquet"))  # fmt: skip
    assert broken.returncode == 2 and damaged.name in broken.stderr
    assert broken.stderr.count("\n") == 1


def test_import_reads_every_format_and_dead_letters_what_is_not_a_reading(
    settings: Settings, client: redis.Redis, tmp_path: Path
) -> None:
    files = {
        "wide.csv": "sensor_id,ts,seq,temp,site\nc1,1796000000000,1,21.5,north\n"
                    "c1,not-a-time,2,22.0,north\nc2,1796000001000,,19,south\n",
        "readings.jsonl": '{"sensor_id": "j1", "ts": 1796000000, "temp": 20.5}\n'
                          "[1, 2]\n{broken\n"
                          '{"sensor_id": "j2", "ts": "2026-12-01T00:00:00Z", "temp": "7"}\n',
        "metrics.lp": "# comment\n"
                      "weather,sensor_id=i1,site=roof\\ top temp=21.5,ok=t,count=3i "
                      "1796000000000000000\n"
                      "weather,host=nobody temp=1 1796000000000000000\n"
                      "weather,sensor_id=i2 temp=2.5\n",
    }  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    results = {name: telemetry(settings, "import", str(tmp_path / name)) for name in files}
    for name, done in results.items():
        assert done.returncode == 1, (name, done.stderr)  # each has a refused line
    assert results["wide.csv"].stdout.startswith("2 readings written, 1 refused")
    assert "wide.csv:3: " in results["wide.csv"].stdout
    assert results["readings.jsonl"].stdout.startswith("2 readings written, 2 refused")
    # A line without its time is refused: a backfill keeps each reading's own time.
    assert results["metrics.lp"].stdout.startswith("1 readings written, 2 refused")
    assert "metrics.lp:3: no sensor_id tag" in results["metrics.lp"].stdout
    assert "metrics.lp:4: ts is missing" in results["metrics.lp"].stdout
    entries = {f["sensor_id"]: f for _, f in read_range(client, settings.stream)}
    assert set(entries) == {"c1", "c2", "j1", "j2", "i1"}
    assert entries["c1"]["temp"] == "21.5" and entries["c2"]["ts"] == "1796000001000"
    assert entries["j1"]["ts"] == "1796000000000" and float(entries["j2"]["temp"]) == 7
    numbers = {k: float(v) for k, v in entries["i1"].items() if k != "sensor_id"}
    assert numbers == {"temp": 21.5, "ok": 1.0, "count": 3.0, "ts": 1796000000000}
    dead = read_range(client, f"{settings.stream}:dead")
    reasons = [f["reason"] for _, f in dead]
    assert len(dead) == 5 and any(r.startswith(f"{tmp_path / 'wide.csv'}:3: ") for r in reasons)
    # Labels from text columns and tags reach the device registry.
    devices = json.loads(telemetry(settings, "devices", "list", "--format", "json").stdout)
    labels = {d["sensor_id"]: d["labels"] for d in devices}
    assert labels.get("i1") == {"site": "roof top"} and labels.get("c1") == {"site": "north"}


def test_an_export_imported_elsewhere_gives_the_same_readings(
    archived: Settings, client: redis.Redis, tmp_path: Path
) -> None:
    settings = archived
    write(client, settings.stream, 0, 700)
    for output_format in ("parquet", "jsonl", "csv"):
        out = tmp_path / f"all.{output_format}"
        assert telemetry(settings, "export", "--since", str(T0), "--until", str(T0 + 10**9),
                         "--format", output_format, "-o", str(out)).returncode == 0  # fmt: skip
        other = settings.replace(stream=f"copy-{output_format}")
        done = telemetry(other, "import", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        copied = sorted(tuple(sorted(f.items())) for _, f in read_range(client, other.stream))
        assert copied == sorted(tuple(sorted(reading(i).items())) for i in range(700))


def test_import_waits_for_the_groups_instead_of_outrunning_them(
    settings: Settings, client: redis.Redis, tmp_path: Path
) -> None:
    small = settings.replace(maxlen=2000)
    lines = [json.dumps({"sensor_id": f"b{i % 5}", "ts": T0 + i, "temp": i}) for i in range(9000)]
    (tmp_path / "backfill.jsonl").write_text("\n".join(lines) + "\n")
    client.xgroup_create(small.stream, "aggregates", id="0", mkstream=True)
    importing = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "import", str(tmp_path / "backfill.jsonl")],
        env=child_env(small), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)
    # The group reads nothing yet: the import holds at the backlog limit.
    assert importing.poll() is None
    assert client.xlen(small.stream) <= small.backlog_limit + small.write_batch  # type: ignore[operator]
    aggregating = telemetry(small, "aggregate", "--drain")
    while importing.poll() is None:
        aggregating = telemetry(small, "aggregate", "--drain")
    out, err = importing.communicate()
    assert importing.returncode == 0, err
    assert out.startswith("9000 readings written, 0 refused")
    assert "waited" in out
    assert aggregating.returncode == 0
    lost = client.hgetall(f"{small.stream}:lost")
    assert not any(int(v) for v in lost.values())
    sensors = json.loads(telemetry(small, "sensors", "--format", "json").stdout)
    assert len(sensors) == 5


def test_hostile_import_files_are_refused_at_bounded_cost(
    settings: Settings, client: redis.Redis, tmp_path: Path
) -> None:
    huge_line = '{"sensor_id": "h1", "ts": 1796000000000, "note": "' + "x" * 5_000_000 + '"}\n'
    deep = '{"sensor_id": "h2", "ts": 1796000000000, "a": ' + "[" * 10_000 + "]" * 10_000 + "}\n"
    wide_header = ",".join(["sensor_id", "ts", *(f"m{i}" for i in range(50_000))])
    wide_row = ",".join(["h3", "1796000000000", *("1" for _ in range(50_000))])
    files = {
        "huge.jsonl": huge_line + '{"sensor_id": "ok1", "ts": 1796000000000, "temp": 1}\n',
        "deep.jsonl": deep + '{"sensor_id": "ok2", "ts": 1796000000000, "temp": 2}\n',
        "wide.csv": wide_header + "\n" + wide_row + "\n",
        "binary.jsonl": "\x00\xff garbage \x1b[31m\n" * 1000,
        "many-names.lp": "".join(
            f"m,sensor_id=s{i} f{i}=1 1796000000000000000\n" for i in range(20_000)
        ),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, errors="surrogateescape")
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 this is not parquet")
    # 1: records refused (dead-lettered); 2: the file cannot be read at all, one line says why;
    # 0: twenty thousand sensors with a metric name each are readings (the aggregates' own
    # limits bound what they keep of them).
    expected = {"huge.jsonl": 1, "deep.jsonl": 1, "wide.csv": 2, "binary.jsonl": 1,
                "many-names.lp": 0, "fake.parquet": 2}  # fmt: skip
    for name, status in expected.items():
        started = time.monotonic()
        done = telemetry(settings, "import", str(tmp_path / name))
        assert time.monotonic() - started < 60, name
        assert done.returncode == status, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        if status == 2:
            assert done.stderr.count("\n") == 1, done.stderr
    # The good readings beside the bad ones were written; the rest dead-lettered, each bounded.
    sensors = {f["sensor_id"] for _, f in read_range(client, settings.stream)}
    assert {"ok1", "ok2"} <= sensors and "h1" not in sensors
    dead = read_range(client, f"{settings.stream}:dead")
    assert len(dead) >= 1000 and max(len(json.dumps(f)) for _, f in dead) < 20_000
    assert client.memory_usage(f"{settings.stream}:dead") < 64 * 1024 * 1024  # type: ignore[operator]
