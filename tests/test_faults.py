"""Faults with real processes: Redis paused, consumers killed with SIGKILL, SIGTERM mid-batch."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from ingest.contract.columns import ReadingColumns
from ingest.groups import Batch
from ingest.redis.connection import connect
from ingest.redis.writer import StreamWriter
from tests.conftest import RedisProcess, child_env, make_settings
from tests.helpers import Recorder, drain, entries, pending_count, reading_runner


def fill(client: redis.Redis, stream: str, count: int) -> list[str]:
    writer = StreamWriter(client, stream, 10**7, batch_size=1000)
    for i in range(count):
        writer.add({"sensor_id": f"s{i % 100}", "seq": str(i // 100), "temp": str(i)})
    writer.flush()
    return [entry_id for entry_id, _ in entries(client, stream)]


class SlowRecorder(Recorder):
    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        time.sleep(0.01)
        super().__call__(batch)


def test_redis_paused_past_the_socket_timeout_then_resumed(own_redis: RedisProcess) -> None:
    settings = make_settings(own_redis.url, read_batch=100)
    client = connect(settings)
    ids = fill(client, settings.stream, 20_000)
    handler = SlowRecorder()
    runner = reading_runner(client, settings, handler)
    worker = threading.Thread(target=drain, args=(runner, 120.0))
    worker.start()
    while len(handler.seen) < 2000:
        time.sleep(0.01)
    own_redis.pause()
    time.sleep(settings.socket_timeout_s + 1.5)
    own_redis.resume()
    worker.join()

    assert runner.stats.redis_outages == 1
    assert set(handler.seen) == set(ids)
    assert pending_count(client, settings.stream, "aggregates") == 0


def consume_command(stream: str, consumer: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "telemetry", "consume", stream, "aggregates", consumer, *extra]


def read_lines(pipe: object, count: int) -> list[str]:
    lines = []
    for _ in range(count):
        line = pipe.readline()  # type: ignore[attr-defined]
        if not line:
            break
        lines.append(line)
    return lines


def ids_of(lines: list[str]) -> list[str]:
    return [json.loads(line)["id"] for line in lines]


@pytest.mark.parametrize("seed", range(5))
def test_a_killed_consumer_leaves_nothing_behind(redis_url: str, tmp_path: Path, seed: int) -> None:
    settings = make_settings(redis_url, read_batch=200)
    client = connect(settings)
    ids = fill(client, settings.stream, 20_000)
    rng = random.Random(seed)
    env = child_env(settings)
    victim = subprocess.Popen(
        consume_command(settings.stream, "victim"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # Read a random share of its output and stop: it blocks printing, holding its batch.
    printed = read_lines(victim.stdout, rng.randrange(100, 15_000))
    time.sleep(0.3)
    held = int(client.xpending(settings.stream, "aggregates")["pending"])
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.stdout is not None
    printed += victim.stdout.readlines()
    assert held > 0

    out = tmp_path / "survivor.jsonl"
    with out.open("w") as sink:
        survivor = subprocess.run(
            consume_command(settings.stream, "survivor", "--drain"),
            env=env,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert survivor.returncode == 0, survivor.stderr
    taken_over = ids_of(out.read_text().splitlines())
    assert set(ids_of(printed)) | set(taken_over) == set(ids)
    assert "claimed" in survivor.stderr
    assert pending_count(client, settings.stream, "aggregates") == 0


def test_sigterm_during_a_batch_finishes_and_acknowledges_it(redis_url: str) -> None:
    settings = make_settings(redis_url, read_batch=2000)
    client = connect(settings)
    ids = fill(client, settings.stream, 5000)
    worker = subprocess.Popen(
        consume_command(settings.stream, "c1"),
        env=child_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None and worker.stderr is not None
    # It blocks printing its first batch into a pipe nobody reads yet.
    first = read_lines(worker.stdout, 10)
    time.sleep(0.3)
    # The batch in hand, and what the reads sent ahead of it delivered.
    held = pending_count(client, settings.stream, "aggregates")
    assert held >= 2000
    worker.send_signal(signal.SIGTERM)
    rest = worker.stdout.readlines()
    assert worker.wait(30) == 0
    # It finished all it held, read nothing more, and acknowledged it.
    printed = ids_of(first + rest)
    assert printed == ids[:held]
    assert pending_count(client, settings.stream, "aggregates") == 0
    assert "SIGTERM received" in worker.stderr.read()
