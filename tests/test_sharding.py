"""Readings spread over shards by sensor id, on one Redis and on a real three-master Redis
Cluster: each reading is aggregated once, in its sensor's shard, exactly as numpy says; answers
merged across shards equal numpy's; alerts are the ones a single stream raises; workers killed
with SIGKILL lose nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from redis.crc import key_slot

from analytics import fleet
from analytics.aggregator import GROUP
from analytics.alerts.evaluator import GROUP as ALERTS_GROUP
from analytics.query import Stores
from analytics.worker import run_aggregator
from ingest.keys import SETTLED, StreamKeys
from ingest.redis.connection import connect, read_range
from ingest.redis.shardedwriter import open_writer
from ingest.settings import Settings
from ingest.shards import Shard, shard_of, shards
from simulator.dataset import Made, entries_of, make_readings
from telemetry.localcluster import LocalCluster
from tests.aggregates_reference import assert_buckets_match
from tests.alerting import evaluate_all, timeline
from tests.conftest import child_env, make_settings
from tests.test_cli import telemetry

SHARDS = 3
RULES = """
[[rule]]
name = "warm"
type = "threshold"
metric = "temp"
above = 21.0
clear = 19.0
for = "2s"
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters; shard i's slot on master i, as an operator would place them."""
    with LocalCluster(3, workdir=tmp_path_factory.mktemp("cluster")) as local:
        yield local


def place_shards(cluster: LocalCluster, settings: Settings) -> None:
    for shard in shards(settings):
        cluster.assign(key_slot(shard.stream.encode()), shard.index % cluster.masters)


def flush(cluster: LocalCluster) -> None:
    for i, node in enumerate(cluster.nodes):
        if node.process is not None and cluster.client(i).info("replication")["role"] == "master":
            cluster.client(i).flushall()


def readings_of(made: Made, shard: Shard, count: int) -> Made:
    ids = np.array([made.sensor_id(k) for k in range(int(made.sensor.max()) + 1)])
    return made.take(np.array([shard_of(s, count) == shard.index for s in ids])[made.sensor])


def ledger_of(shard: Shard, group: str) -> dict[str, str]:
    return cast(
        dict[str, str], connect(shard.settings).hgetall(StreamKeys(shard.stream).ledger(group))
    )


def settled(settings: Settings, group: str) -> int:
    """Entries the group settled in every shard, whatever the outcome."""
    total = 0
    for shard in shards(settings):
        ledger = ledger_of(shard, group)
        total += sum(int(v) for k, v in ledger.items() if k.startswith(SETTLED))
    return total


def alert_changes(settings: Settings) -> list[dict[str, str]]:
    return [
        dict(fields)
        for shard in shards(settings)
        for _, fields in read_range(connect(shard.settings), shard.settings.alerts_stream)
    ]


def assert_every_shard_exact(settings: Settings, made: Made) -> None:
    """Each shard holds its own sensors' readings, each aggregated once, as numpy says."""
    every = shards(settings)
    for shard in every:
        mine = readings_of(made, shard, len(every))
        raw = connect(shard.settings, decode=False)
        assert raw.xlen(shard.stream) == len(mine.ts)
        assert assert_buckets_match(raw, mine, "10s", 10_000, shard.stream) > 0
    aggregated = 0
    for shard in every:
        aggregated += int(ledger_of(shard, GROUP)[f"{SETTLED}aggregated"])
    assert aggregated == len(made.ts)


def assert_fleet_top_is_numpys(settings: Settings, made: Made) -> None:
    """The hottest sensors across every shard, as numpy ranks them."""
    now = int(made.ts.max()) + 1
    hottest = {}
    for k in np.unique(made.sensor).tolist():
        hottest[made.sensor_id(k)] = float(made.values["temp"][made.sensor == k].max())
    want = sorted(hottest, key=lambda s: (-hottest[s], s))[:5]
    top = fleet.fleet_top(Stores.from_settings(settings), "temp", "max", 3_600_000, 5, at_ms=now)
    assert [r.sensor_id for r in top] == want
    assert [r.value for r in top] == [hottest[s] for s in want]


def test_a_sensors_shard_is_crc32_of_its_id_modulo_the_shards(settings: Settings) -> None:
    # The documented rule, for producers written in any language: these must never change.
    assert [shard_of(f"sensor{i}", 3) for i in range(1, 7)] == [2, 2, 2, 0, 0, 0]
    assert shard_of("greenhouse-7/probe", 16) == 9 and shard_of("anything", 1) == 0
    shown = telemetry(settings, "shard-of", "--shard-count", "3", "sensor1", "sensor4")
    assert shown.stdout.splitlines() == ["sensor1\t2\tapp:event:{2}", "sensor4\t0\tapp:event:{0}"]


def test_three_shards_on_one_redis_aggregate_each_reading_once(settings: Settings) -> None:
    sharded = settings.replace(shard_count=SHARDS)
    made = make_readings(sensors=30, per_sensor=200, burst=25, seed=11)
    open_writer(sharded).write(entries_of(made))
    run_aggregator(sharded, "w1", drain=True)

    assert_every_shard_exact(sharded, made)
    assert_fleet_top_is_numpys(sharded, made)
    status = json.loads(telemetry(sharded, "status", "--format", "json").stdout)
    assert status["total"]["groups"][GROUP]["settled"]["aggregated"] == len(made.ts)
    assert [s["stream"] for s in status["shards"]] == [s.stream for s in shards(sharded)]
    sensors = telemetry(sharded, "sensors", "--format", "csv").stdout.splitlines()
    assert len(sensors) == 1 + 30


def workers(settings: Settings, command: str, count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "telemetry", command],
            env=child_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def wait_for(done: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(done) and done():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not done in {timeout_s}s")


def test_a_cluster_keeps_every_guarantee_through_killed_workers(
    cluster: LocalCluster, settings: Settings, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    on_cluster = make_settings(cluster.url, redis_cluster=True, shard_count=SHARDS,
                               rules=str(rules))  # fmt: skip
    flush(cluster)
    place_shards(cluster, on_cluster)
    made = make_readings(sensors=45, per_sensor=240, burst=40, seed=7)
    entries = entries_of(made)

    aggregators = workers(on_cluster, "aggregate", 2)
    alerters = workers(on_cluster, "alert-worker", 2)
    writer = open_writer(on_cluster)
    half = len(entries) // 2
    writer.write(entries[:half])
    wait_for(lambda: settled(on_cluster, GROUP) > 0, 30, "first batches")
    for doomed in (aggregators[0], alerters[0]):
        doomed.kill()
    aggregators += workers(on_cluster, "aggregate", 1)
    writer.write(entries[half:])
    try:
        wait_for(lambda: settled(on_cluster, GROUP) >= len(entries), 90, "aggregation")
        wait_for(lambda: settled(on_cluster, ALERTS_GROUP) >= len(entries), 90, "alerts")
    finally:
        for process in aggregators + alerters:
            process.terminate()
            process.wait(10)

    assert_every_shard_exact(on_cluster, made)
    assert_fleet_top_is_numpys(on_cluster, made)
    # The same readings on one stream of a single Redis raise and resolve the same alerts.
    client = connect(settings)
    open_writer(settings, client=client).write(entries)
    evaluate_all(client, settings, RULES)
    single = timeline(dict(fields) for _, fields in read_range(client, settings.alerts_stream))
    assert single and timeline(alert_changes(on_cluster)) == single
    # Each shard's keys, alerts included, live on the master serving its slot.
    for shard in shards(on_cluster):
        node = cluster.master_of(key_slot(shard.stream.encode()))
        assert node == shard.index and cluster.client(node).exists(shard.settings.alerts_stream)
    status = telemetry(on_cluster, "status")
    assert status.returncode == 0 and f"all {SHARDS} shards" in status.stdout


def test_the_cluster_is_refused_without_cluster_mode(cluster: LocalCluster) -> None:
    plain = make_settings(cluster.url, shard_count=SHARDS)
    written = telemetry(plain, "simulate", "s1", "--count", "1", "--rate", "100")
    assert written.returncode != 0
    assert "TELEMETRY_REDIS_CLUSTER=yes" in written.stderr
