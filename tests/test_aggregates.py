"""The aggregates group on real Redis: exact under kill -9, stalls, re-sends, late data.

Over 400 lines: each test checks the stored buckets against numpy (`aggregates_reference`), and
splitting them would only spread that one comparison over files."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from analytics.aggregator import APPLY_BATCH, GROUP, Aggregator
from analytics.rollup import GRACE_MS, Rollup
from analytics.sketch import RELATIVE_ERROR
from analytics.stats import BIN_DTYPE, RECORD_FORMAT
from analytics.summary import SUMMARY
from analytics.tiers import parse_tiers
from analytics.worker import aggregator_runner
from ingest.contract.columns import decode_columns
from ingest.deadletter import list_dead_letters
from ingest.groups import GroupRunner
from ingest.keys import StreamKeys
from ingest.redis.connection import connect
from ingest.settings import Settings
from ingest.status import format_status, stream_status
from simulator.dataset import Made, make_readings, write
from tests.aggregates_reference import assert_buckets_match, stored_buckets
from tests.conftest import RedisProcess, child_env, make_settings
from tests.helpers import add, drain, drain_without_rollup, pending_count


def aggregator_process(settings: Settings, consumer: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "telemetry", "aggregate", "--consumer", consumer],
        env=child_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_until_done(client: redis.Redis, stream: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        [group] = [g for g in client.xinfo_groups(stream) if g["name"] == GROUP]
        if group["lag"] == 0 and group["pending"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"aggregates group not done in {timeout_s}s: {group}")


def wait_until_reading(
    client: redis.Redis, stream: str, started: dict[str, float], timeout_s: float
) -> None:
    """Until each consumer has read from the group since its process started (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        idle = {c["name"]: c["idle"] / 1000 for c in client.xinfo_consumers(stream, GROUP)}
        if all(idle.get(name, timeout_s) < time.monotonic() - at for name, at in started.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"consumers not reading in {timeout_s}s: {idle}")


def wait_until_rolled_up(
    client: redis.Redis, settings: Settings, newest_ms: int, timeout_s: float
) -> None:
    """Until the workers have rolled the fine bucket holding `newest_ms` up into the coarse
    tiers."""
    finest = parse_tiers(settings.tiers)[0]
    rollup = Rollup(client, StreamKeys(settings.stream), parse_tiers(settings.tiers))
    deadline = time.monotonic() + timeout_s
    while (mark := rollup.mark()) is None or mark.bucket <= finest.bucket_of(newest_ms):
        assert time.monotonic() < deadline, f"roll-up at {mark}, not past {newest_ms}"
        time.sleep(0.2)


def ledger(client: redis.Redis, stream: str = "app:event") -> dict[str, int]:
    raw: dict[str, str] = client.hgetall(StreamKeys(stream).ledger(GROUP))  # type: ignore[assignment]
    return {k: int(v) for k, v in raw.items() if k != "entries_before_start"}


def assert_ledger(client: redis.Redis, readings: int) -> None:
    """All aggregated, nothing dropped or dead-lettered. Entries taken over from a dead or
    stalled worker arrive after later ones, which shows as seq gaps opened and filled, not
    checked here."""
    keys = StreamKeys("app:event")
    assert client.hgetall(keys.dead_counts) == {}, list_dead_letters(client, keys, count=3)
    counts = ledger(client)
    assert counts.pop("settled:aggregated") == readings
    counts.pop("seq_gaps", None)
    counts.pop("seq_gaps_filled", None)
    assert counts == {}


@pytest.mark.slow
def test_a_million_readings_exact_while_a_worker_is_killed_five_times(
    own_redis: RedisProcess,
) -> None:
    seed = 1
    settings = make_settings(own_redis.url, claim_idle_ms=1000)
    client = connect(settings)
    made = make_readings(sensors=1000, per_sensor=1000, burst=50, seed=seed)
    write(client, made)
    rng = random.Random(seed)
    workers = {name: aggregator_process(settings, name) for name in ("a1", "a2", "a3")}
    started = dict.fromkeys(workers, time.monotonic())
    try:
        for _ in range(5):
            time.sleep(rng.uniform(0.5, 3.0))
            victim = rng.choice(sorted(workers))
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            workers[victim] = aggregator_process(settings, victim)
            started[victim] = time.monotonic()
        wait_until_done(client, settings.stream, 240)
        wait_until_rolled_up(client, settings, int(made.ts.max()), 120)
        # A worker stopped while still starting up would die of the signal, not stop. The
        # wait is generous: after the backlog, on a loaded machine, all three were once seen
        # over a minute without a read (their upkeep packing the closed chunks meanwhile).
        wait_until_reading(client, settings.stream, started, 180)
    finally:
        for worker in workers.values():
            worker.terminate()
        for worker in workers.values():
            assert worker.wait(30) == 0
    assert_ledger(client, 1_000_000)
    assert assert_buckets_match(own_redis.url, made, "10s", 10_000) > 100_000
    assert_buckets_match(own_redis.url, made, "1m", 60_000)


def test_a_stalled_worker_whose_batch_was_taken_over_counts_nothing(
    own_redis: RedisProcess,
) -> None:
    settings = make_settings(own_redis.url, claim_idle_ms=1000, read_batch=500)
    client = connect(settings)
    made = make_readings(sensors=200, per_sensor=500, burst=10, seed=4)
    write(client, made)
    sleeper = aggregator_process(settings, "sleeper")
    processes = [sleeper]
    try:
        while True:
            time.sleep(0.05)
            sleeper.send_signal(signal.SIGSTOP)
            try:
                held = client.xpending_range(settings.stream, GROUP, "-", "+", 1, "sleeper")
            except redis.ResponseError:  # the group is not there yet
                held = []
            if held:
                break
            sleeper.send_signal(signal.SIGCONT)
        processes.append(aggregator_process(settings, "worker"))
        time.sleep(settings.claim_idle_ms / 1000 * 3)
        sleeper.send_signal(signal.SIGCONT)
        wait_until_done(client, settings.stream, 120)
    finally:
        sleeper.send_signal(signal.SIGCONT)
        for process in processes:
            process.terminate()
            process.wait(30)
    assert_ledger(client, 100_000)
    assert_buckets_match(own_redis.url, made, "10s", 10_000)


def test_a_batch_re_sent_after_a_client_timeout_is_counted_once(
    own_redis: RedisProcess,
) -> None:
    settings = make_settings(own_redis.url, read_batch=100)
    made = make_readings(sensors=50, per_sensor=100, burst=100, seed=5)
    # Without seqs, nothing but the ownership check can tell the second copy from new data.
    write(connect(settings), made, with_seq=False)
    client = connect(settings)
    aggregator = Aggregator(client, StreamKeys(settings.stream), parse_tiers(settings.tiers))
    runner = GroupRunner(client, settings, GROUP, "c1", aggregator, decode_columns)
    runner.ensure_group()
    # Loaded first, so that no run answers NOSCRIPT.
    APPLY_BATCH.load(client)
    original_apply = aggregator._apply

    def apply_twice(args: Any) -> Any:
        # As a client does whose first copy ran but whose reply timed out: redis-py re-sends
        # the command on a new connection. Only the first batch.
        aggregator._apply = original_apply  # type: ignore[method-assign]
        original_apply(args)
        return original_apply(args)

    aggregator._apply = apply_twice  # type: ignore[method-assign]
    with apply_script_runs(own_redis.url) as runs:
        while runner._read_new():
            pass
        runner._write_prepared()

    assert len(runs) == aggregator.stats.batches + aggregator.stats.not_owned + 1
    assert aggregator.stats.not_owned == 1
    assert ledger(client) == {"settled:aggregated": 5000}
    assert int(client.xpending(settings.stream, GROUP)["pending"]) == 0
    assert_buckets_match(own_redis.url, made, "10s", 10_000)


@contextmanager
def apply_script_runs(url: str) -> Iterator[list[int]]:
    """The runs of the apply script while the block ran (each run's microseconds), from the
    slow log."""
    client = redis.Redis.from_url(url, decode_responses=True)
    before: dict[str, str] = client.config_get("slowlog-*")  # type: ignore[assignment]
    client.config_set("slowlog-max-len", 100_000)
    client.config_set("slowlog-log-slower-than", 0)
    client.slowlog_reset()
    runs: list[int] = []
    try:
        yield runs
    finally:
        client.config_set("slowlog-log-slower-than", before["slowlog-log-slower-than"])
        for entry in client.slowlog_get(100_000):
            if entry["command"].startswith(f"EVALSHA {APPLY_BATCH.sha} ".encode()):
                runs.append(entry["duration"])
        client.config_set("slowlog-max-len", before["slowlog-max-len"])


def test_late_out_of_order_duplicate_and_expired_readings_land_where_the_contract_says(
    client: redis.Redis, settings: Settings
) -> None:
    now = time.time_ns() // 1_000_000
    minute = now - now % 60_000 - 10 * 60_000
    day = 86_400_000

    def reading(seq: int, ts: int, temp: float) -> dict[str, str]:
        return {"sensor_id": "s1", "seq": str(seq), "ts": str(ts), "temp": str(temp)}

    stream = settings.stream
    for seq in range(10):
        add(client, stream, reading(seq, minute + seq * 1000, 20.0 + seq))
    runner_settings = settings.replace(read_batch=4)
    drain(aggregator_runner(client, runner_settings, "c1"))
    # A device back online sends what it buffered: older, out of order, some sent twice.
    late = [reading(12, minute - 50_000, 5.0), reading(11, minute - 55_000, 6.0)]
    for fields in [
        *late,
        late[0],
        reading(3, minute + 3000, 99.0),
        reading(10, minute + 10_000, 30.0),
    ]:
        add(client, stream, fields)
    add(client, stream, reading(13, now - 8 * day, 1.0))  # kept by the 1h tier only
    add(client, stream, reading(14, now - 100 * day, 1.0))  # older than every tier
    add(client, stream, reading(15, now + 3 * 3_600_000, 1.0))  # from a clock hours ahead
    drain(aggregator_runner(client, runner_settings, "c1"))

    counts = ledger(client)
    assert counts["settled:aggregated"] == 14
    assert counts["settled:duplicate"] == 2
    assert counts["settled:too_old"] == 1 and counts["settled:too_new"] == 1
    assert counts["outside_retention:10s"] == 2 and counts["outside_retention:1h"] == 1
    status = stream_status(settings, stream, settings.maxlen, settings.trim_warn_ratio)
    [group] = status.groups
    assert group.settled == {"aggregated": 14, "duplicate": 2, "too_old": 1, "too_new": 1}
    assert group.unaccounted == 0
    tens = stored_buckets(settings.redis_url, "10s", "temp")
    assert tens[("s1", minute)].count == 10
    assert tens[("s1", minute)].report("max") == 29.0
    assert tens[("s1", minute + 10_000)].count == 1
    assert tens[("s1", minute - 50_000)].count == 1 and tens[("s1", minute - 60_000)].count == 1
    hours = stored_buckets(settings.redis_url, "1h", "temp")
    eight_days_ago = now - 8 * day
    assert hours[("s1", eight_days_ago - eight_days_ago % 3_600_000)].count == 1


def test_a_sensor_that_skips_seqs_is_counted_and_its_gaps_recorded(
    client: redis.Redis, settings: Settings
) -> None:
    """Lost messages leave gaps in a sensor's seqs: its readings are still counted, each gap
    once, and a late reading that fills one is counted too, a repeat of it not again."""
    for batch in ([0, 1, 3, 7], [5], [5, 8]):
        for seq in batch:
            add(client, settings.stream, {"sensor_id": "s1", "seq": str(seq), "temp": "1"})
        drain(aggregator_runner(client, settings, "c1"))
    assert ledger(client) == {
        "settled:aggregated": 6,
        "settled:duplicate": 1,
        "seq_gaps": 4,
        "seq_gaps_filled": 1,
    }
    assert client.xlen(StreamKeys(settings.stream).dead) == 0


def test_coarse_tiers_rolled_up_around_late_readings_count_each_reading_once(
    settings: Settings,
) -> None:
    """Half the readings arrive after the roll-up has passed their fine buckets, or while it is
    halfway through the sensors of a pass: each lands in every tier exactly once."""
    client = connect(settings)
    keys, tiers = StreamKeys(settings.stream), parse_tiers(settings.tiers)
    finest = tiers[0]
    # In the middle of the previous hour, so that the readings' fine buckets share one
    # chunk (an hour), as the passes below need, whatever the time of the run.
    hour = finest.chunk_ms
    made = make_readings(
        sensors=20,
        per_sensor=90,
        burst=90,
        seed=11,
        now_ms=(time.time_ns() // 1_000_000) // hour * hour - hour // 2,
    )

    def aggregate(part: Made) -> None:
        write(client, part)
        drain_without_rollup(client, settings.replace(read_batch=50))

    aggregate(made.take(made.seq % 2 == 1))
    rollup = Rollup(client, keys, tiers, sensors_per_step=7)
    rollup.catch_up(int(np.median(made.ts)))
    assert rollup.step(int(made.ts.max()))
    # A pass over several fine buckets, halfway through the sensors.
    mark = rollup.mark()
    assert mark is not None and 0 < mark.sensor < 20
    assert made.ts.min() < mark.bucket < mark.bucket + finest.bucket_ms < mark.until

    aggregate(made.take(made.seq % 2 == 0))
    assert rollup.catch_up(finest.bucket_of(int(made.ts.max())) + finest.bucket_ms) > 0
    status = stream_status(settings, settings.stream, settings.maxlen, 0.8)
    assert status.rolled_up_to_ms == finest.bucket_of(int(made.ts.max())) + finest.bucket_ms
    assert "coarse tiers rolled up to" in format_status(status)
    assert_ledger(client, len(made.ts))
    for tier in tiers:
        assert assert_buckets_match(settings.redis_url, made, tier.name, tier.bucket_ms) > 0


def test_while_a_backlog_waits_the_roll_up_stays_behind_the_newest_reading_aggregated(
    settings: Settings,
) -> None:
    """A backfill's fine buckets are ready to roll up once the group has read past them, not as
    soon as the clock says they ended; with nothing unread, the clock decides."""
    client = connect(settings)
    rollup = Rollup(client, StreamKeys(settings.stream), parse_tiers(settings.tiers))
    made = make_readings(sensors=5, per_sensor=120, burst=120, seed=13)
    aggregated, unread = made.take(made.seq < 60), made.take(made.seq >= 60)
    write(client, aggregated)
    drain_without_rollup(client, settings)
    write(client, unread)
    assert rollup.ready_until_ms(GROUP) == int(aggregated.ts.max()) - GRACE_MS
    assert rollup.ready_until_ms("another-group") >= int(made.ts.max()) - GRACE_MS

    drain_without_rollup(client, settings)
    before_ms = time.time_ns() // 1_000_000
    ready = rollup.ready_until_ms(GROUP)
    assert before_ms - GRACE_MS <= ready <= time.time_ns() // 1_000_000 - GRACE_MS


def test_aggregates_from_before_the_roll_up_existed_are_not_rolled_up_again(
    settings: Settings,
) -> None:
    """Aggregates written by a version that merged every reading into every tier, and no mark:
    the roll-up starts after them, and readings for their buckets are merged into every tier
    as before."""
    client = connect(settings)
    made = make_readings(sensors=20, per_sensor=60, burst=60, seed=12)
    for part in (made.seq % 2 == 1, made.seq % 2 == 0):
        write(client, made.take(part))
        drain(aggregator_runner(client, settings, "c1"))
        client.delete(StreamKeys(settings.stream).rollup_mark)
    assert_ledger(client, len(made.ts))
    for tier in parse_tiers(settings.tiers):
        assert assert_buckets_match(settings.redis_url, made, tier.name, tier.bucket_ms) > 0


def test_with_one_tier_nothing_is_rolled_up(settings: Settings) -> None:
    one_tier = settings.replace(tiers="10s:6h")
    client = connect(one_tier)
    add(client, one_tier.stream, {"sensor_id": "s1", "temp": "1"})
    drain(aggregator_runner(client, one_tier, "c1"))
    status = stream_status(one_tier, one_tier.stream, one_tier.maxlen, 0.8)
    assert status.rolled_up_to_ms is None
    assert "rolled up" not in format_status(status)


def test_the_aggregate_command_drains_and_exits(settings: Settings, tmp_path: Path) -> None:
    client = connect(settings)
    made = make_readings(sensors=20, per_sensor=50, burst=50, seed=6)
    write(client, made)
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", "aggregate", "--drain"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert ledger(client) == {"settled:aggregated": 1000}


def test_readings_without_seq_or_ts_are_counted(settings: Settings) -> None:
    """A plain client's entries carry neither: timed by their IDs, counted like any others."""
    client = connect(settings)
    for value in ("1.5", "2.5", "4"):
        add(client, settings.stream, {"sensor_id": "plain", "temp": value})
    drain(aggregator_runner(client, settings, "c1"))
    assert ledger(client) == {"settled:aggregated": 3}
    hours = stored_buckets(settings.redis_url, "1h", "temp").values()
    assert sum(b.count for b in hours) == 3 and sum(b.column("s") for b in hours) == 8.0


def test_a_bucket_merged_from_many_batches_keeps_every_value_in_its_histogram(
    settings: Settings,
) -> None:
    """Hundreds of small batches into one wide hourly bucket: its stored histogram grows past
    the size where the apply script merges repeated bins, and still counts every value once."""
    client = connect(settings)
    rng = random.Random(3)
    values = [rng.uniform(1, 1000) for _ in range(4000)]
    now = int(time.time() * 1000)
    hour = now - now % 3_600_000
    for seq, value in enumerate(values):
        ts = hour + seq * 3_600_000 // len(values)
        add(client, settings.stream, {"sensor_id": "wide", "ts": str(ts), "seq": str(seq),
                                      "temp": repr(value)})  # fmt: skip
    drain(aggregator_runner(client, settings.replace(read_batch=20, reads_per_batch=1), "c1"))
    (bucket,) = stored_buckets(settings.redis_url, "1h", "temp").values()
    assert bucket.count == len(values) == sum(bucket.bins.values())
    tier = parse_tiers("1h:90d")[0]
    chunk = StreamKeys(settings.stream).aggregate_chunk("1h", "temp", tier.chunk_of(hour))
    # Appended and never merged, it would hold a bin for every value.
    assert len(client.hget(chunk, f"wide|{hour}") or b"") < 8 * len(values) / 4
    ordered = sorted(values)
    for q, estimate in zip((0.5, 0.9, 0.99), bucket.percentiles((0.5, 0.9, 0.99)), strict=True):
        exact = ordered[int(q * (len(values) - 1))]
        assert estimate is not None and abs(estimate - exact) <= RELATIVE_ERROR * exact


def test_a_coarse_bucket_rolled_up_in_one_pass_keeps_one_histogram_entry_per_bin(
    settings: Settings,
) -> None:
    """A drain's roll-up folds the six fine records of each whole minute together in one pass:
    the minute is stored with each histogram bin once, as small as one rolled up a fine bucket
    at a time."""
    client = connect(settings)
    keys, tiers = StreamKeys(settings.stream), parse_tiers(settings.tiers)
    minute = next(tier for tier in tiers if tier.name == "1m")
    made = make_readings(sensors=5, per_sensor=300, burst=300, seed=13)
    write(client, made)
    drain(aggregator_runner(client, settings, "c1"))
    mark = Rollup(client, keys, tiers).mark()
    assert mark is not None
    raw = redis.Redis.from_url(settings.redis_url)
    starts = np.unique(made.ts - made.ts % minute.bucket_ms).tolist()
    whole = [start for start in starts[1:] if start + minute.bucket_ms <= mark.bucket]
    assert len(whole) >= 3
    for k in range(5):
        for start in whole:
            chunk = keys.aggregate_chunk("1m", "temp", minute.chunk_of(start))
            record = raw.hget(chunk, f"{made.sensor_id(k)}|{start}")
            assert isinstance(record, bytes)
            bins = np.frombuffer(record[SUMMARY.size :], BIN_DTYPE)
            assert len(np.unique(bins["key"])) == len(bins)
            inside = (made.sensor == k) & (made.ts >= start) & (made.ts < start + minute.bucket_ms)
            assert int(bins["count"].sum()) == int(inside.sum())


def test_aggregates_stored_in_another_format_are_refused_in_one_line(settings: Settings) -> None:
    client = connect(settings)
    env = child_env(settings)

    def telemetry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "telemetry", *args], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    add(client, settings.stream, {"sensor_id": "s1", "temp": "20"})
    assert telemetry("aggregate", "--drain").returncode == 0
    meta = StreamKeys(settings.stream).meta
    assert client.hget(meta, "aggregates_format") == str(RECORD_FORMAT)

    client.hset(meta, "aggregates_format", "999")
    add(client, settings.stream, {"sensor_id": "s1", "temp": "21"})
    refused = telemetry("aggregate", "--drain")
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith("telemetry: error: the aggregates in Redis are format 999")
    )
    # Nothing written in the wrong layout, nothing dead-lettered: the reading waits.
    assert pending_count(client, settings.stream, GROUP) == 1
    assert client.xlen(StreamKeys(settings.stream).dead) == 0
    asked = telemetry("query", "s1", "--metric", "temp")
    assert asked.returncode == 1
    assert asked.stderr.strip() == refused.stderr.strip().splitlines()[-1]
