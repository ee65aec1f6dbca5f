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
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from redis.crc import key_slot

from analytics import fleet, query
from analytics.aggregator import GROUP
from analytics.alerts.evaluator import GROUP as ALERTS_GROUP
from analytics.query import Stores
from analytics.worker import run_aggregator
from ingest.deadletter import dead_letter_record
from ingest.errors import RedisUnavailable, SettingsError
from ingest.keys import SETTLED, StreamKeys
from ingest.redis.connection import connect, fields_arg, read_range
from ingest.redis.shardedwriter import open_writer
from ingest.settings import Settings
from ingest.shards import Shard, shard_of, shards
from simulator.dataset import Made, entries_of, make_readings
from telemetry.localcluster import LocalCluster
from telemetry.localserver import LocalMosquitto
from telemetry.shardscmd import show_shards
from telemetry.web.app import create_app
from tests.aggregates_reference import assert_buckets_match
from tests.alerting import evaluate_all, timeline
from tests.conftest import child_env, make_settings
from tests.test_bridge import Devices, bridge_process, wait_subscribed
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
    """Three masters; the tests place shard i on master i (`telemetry shards --place`)."""
    with LocalCluster(3, workdir=tmp_path_factory.mktemp("cluster")) as local:
        yield local


def flush(cluster: LocalCluster) -> None:
    for i in cluster.master_nodes():
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


def drained(settings: Settings, group: str) -> bool:
    """Whether the group has read and acknowledged everything in every shard."""
    for shard in shards(settings):
        client = connect(shard.settings)
        found = [g for g in client.xinfo_groups(shard.stream) if g["name"] == group]
        if not found or found[0]["lag"] != 0 or found[0]["pending"] != 0:
            return False
    return True


def alert_changes(settings: Settings) -> list[dict[str, str]]:
    return [
        dict(fields)
        for shard in shards(settings)
        for _, fields in read_range(connect(shard.settings), shard.settings.alerts_stream)
    ]


def assert_every_shard_exact(
    settings: Settings, made: Made, *, duplicates_allowed: bool = False
) -> None:
    """Each shard holds its own sensors' readings, each aggregated once, as numpy says (with
    `duplicates_allowed`, a reading written twice, by a writer retrying a batch whose reply it
    lost, is in the stream twice and counted once)."""
    every = shards(settings)
    for shard in every:
        mine = readings_of(made, shard, len(every))
        raw = connect(shard.settings, decode=False)
        in_stream = raw.xlen(shard.stream)
        assert in_stream >= len(mine.ts) if duplicates_allowed else in_stream == len(mine.ts)
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
    storage = json.loads(telemetry(sharded, "storage", "--format", "json").stdout)
    assert storage["sensors"] == 30 and storage["projected_bytes"] > 0
    # A writer set up for another number of shards would split sensors between layouts.
    with pytest.raises(SettingsError, match="TELEMETRY_SHARDS=3"):
        open_writer(settings.replace(shard_count=4)).write(entries_of(made)[:10])


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
    show_shards(on_cluster, place=True)
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
    # Each shard on its own master, its keys, alerts included, beside its stream.
    homes = {cluster.master_of(key_slot(shard.stream.encode())) for shard in shards(on_cluster)}
    assert len(homes) == SHARDS
    for shard in shards(on_cluster):
        node = cluster.master_of(key_slot(shard.stream.encode()))
        assert cluster.client(node).exists(shard.settings.alerts_stream)
    status = telemetry(on_cluster, "status")
    assert status.returncode == 0 and f"all {SHARDS} shards" in status.stdout


def test_the_cluster_is_refused_without_cluster_mode(cluster: LocalCluster) -> None:
    plain = make_settings(cluster.url, shard_count=SHARDS)
    written = telemetry(plain, "simulate", "s1", "--count", "1", "--rate", "100")
    assert written.returncode != 0
    assert "TELEMETRY_REDIS_CLUSTER=yes" in written.stderr


def rows_present(settings: Settings, made: Made) -> npt.NDArray[np.bool_]:
    """Which of `made`'s readings the shards' streams hold (once or more)."""
    pairs = zip(made.sensor.tolist(), made.seq.tolist(), strict=True)
    row_of = {(made.sensor_id(k), j): r for r, (k, j) in enumerate(pairs)}
    present = np.zeros(len(made.ts), np.bool_)
    for shard in shards(settings):
        for _, fields in read_range(connect(shard.settings), shard.stream):
            present[row_of[(fields["sensor_id"], int(fields["seq"]))]] = True
    return present


def test_a_master_killed_fails_over_and_the_pipeline_carries_on(tmp_path: Path) -> None:
    with LocalCluster(3, replicas=1, workdir=tmp_path / "cluster") as cluster:
        on_cluster = make_settings(cluster.url, redis_cluster=True, shard_count=SHARDS)
        # A fresh cluster puts shards 1 and 2 on one master; the operator spreads them.
        placed = telemetry(on_cluster, "shards", "--place")
        assert placed.returncode == 0 and "moved to" in placed.stdout, placed.stderr
        listed = telemetry(on_cluster, "shards").stdout.splitlines()
        assert len({line.split("\t")[3] for line in listed}) == SHARDS
        made = make_readings(sensors=30, per_sensor=400, burst=20, seed=5)
        entries = entries_of(made)
        aggregators = workers(on_cluster, "aggregate", 2)
        writer = open_writer(on_cluster)
        acknowledged = 0
        killed_at: float | None = None
        resumed_after_s: float | None = None
        try:
            for start in range(0, len(entries), 200):
                if killed_at is None and start >= len(entries) // 3:
                    # Mid-stream, while the workers are busy with what came before.
                    wait_for(lambda: settled(on_cluster, GROUP) > 0, 30, "first batches")
                    victim = cluster.master_of(key_slot(shards(on_cluster)[0].stream.encode()))
                    cluster.nodes[victim].kill()
                    killed_at = time.monotonic()
                while True:
                    try:
                        writer.write(entries[start : start + 200])
                        break
                    except RedisUnavailable:
                        time.sleep(0.1)
                acknowledged += len(entries[start : start + 200])
                if killed_at is not None and resumed_after_s is None:
                    resumed_after_s = time.monotonic() - killed_at
            cluster.wait_ok()
            present = rows_present(on_cluster, made)
            wait_for(lambda: drained(on_cluster, GROUP), 90, "aggregation")
        finally:
            for process in aggregators:
                process.terminate()
                process.wait(10)
        # A replica confirms nothing before the master acknowledges a write: what the master
        # took in its last moments may be gone. Everything that survived is aggregated once.
        lost = acknowledged - int(present.sum())
        print(f"failover: writes resumed after {resumed_after_s:.1f}s; {lost} of {acknowledged}"
              " acknowledged readings lost")  # fmt: skip
        assert acknowledged == len(entries) and 0 <= lost < len(entries) // 10
        assert_every_shard_exact(on_cluster, made.take(present), duplicates_allowed=True)


def test_the_api_serves_a_sharded_cluster_as_one_store(cluster: LocalCluster) -> None:
    on_cluster = make_settings(cluster.url, redis_cluster=True, shard_count=SHARDS)
    flush(cluster)
    show_shards(on_cluster, place=True)
    sensors = [f"sensor{i}" for i in range(1, 7)]
    now = int(time.time() * 1000)
    with TestClient(create_app(on_cluster)) as api:
        with api.websocket_connect("/ws/readings?sensor=sensor3") as live:
            body = [{"sensor_id": s, "ts": now - 1000, "temp": 20 + i}
                    for i, s in enumerate(sensors)]  # fmt: skip
            posted = api.post("/readings", json=body)
            assert posted.status_code == 202 and len(posted.json()["ids"]) == len(sensors)
            assert live.receive_json()["fields"]["sensor_id"] == "sensor3"
        # Each reading went to its sensor's shard; a refused one to the first shard's dead
        # letters, from where a replay puts it on its sensor's shard.
        for shard in shards(on_cluster):
            mine = [s for s in sensors if shard_of(s, SHARDS) == shard.index]
            stored = [f["sensor_id"] for _, f in read_range(connect(shard.settings), shard.stream)]
            assert stored == mine
        refused = api.post("/readings", json=[{"sensor_id": "sensor1", "temp": "warm"}])
        assert refused.status_code == 422
        first = shards(on_cluster)[0]
        broken = {"sensor_id": "sensor1", "temp": "oops", "ts": str(now)}
        record = dead_letter_record(first.stream, "test", "", "", 1, "bad", broken)
        connect(first.settings).xadd(StreamKeys(first.stream).dead, fields_arg(record))
        [letter] = api.get("/dead-letters").json()
        fixed = telemetry(on_cluster, "dead-letter", "replay", "--id", letter["dead_id"],
                          "--set", "temp=21.5")  # fmt: skip
        assert fixed.returncode == 0, fixed.stderr
        assert api.get("/dead-letters").json() == []
        run_aggregator(on_cluster, "w1", drain=True)

        listed = api.get("/sensors")
        assert listed.headers["X-Total-Count"] == "6"
        assert [s["sensor_id"] for s in listed.json()] == sorted(sensors)
        top = api.get("/fleet/top", params={"metric": "temp", "by": "max", "n": 3}).json()
        assert [r["sensor_id"] for r in top] == ["sensor6", "sensor5", "sensor4"]
        rolled = api.get("/sensors/sensor1/rolling", params={"metric": "temp", "last": "1h"})
        assert rolled.json()["stats"]["count"] == 2 and rolled.json()["stats"]["max"] == 21.5
        report = api.get("/groups").json()
        assert report["total"]["groups"][GROUP]["settled"]["aggregated"] == 7
        assert (
            'telemetry_group_lag{group="aggregates",stream="app:event:{2}"} 0.0'
            in api.get("/metrics").text
        )


def test_bad_shard_settings_stop_with_one_line(settings: Settings) -> None:
    huge = ",".join(["0-2"] * 20_000) + ",99999999999999999999"
    three = {"TELEMETRY_SHARDS": "3"}
    numbered = "--shards: shards are numbered 0 to 2"
    for flags, env, says in (
        (["aggregate", "--shards", "5"], three, numbered),
        (["aggregate", "--shards", huge], three, numbered),
        (["alert-worker", "--shards", "1-x", "--rules", "r"], three, "expected shard numbers"),
        (["status"], {"TELEMETRY_SHARDS": "0"}, "TELEMETRY_SHARDS: expected a positive integer"),
        (["status"], {"TELEMETRY_REDIS_CLUSTER": "maybe"}, "expected yes or no"),
    ):
        refused = telemetry(settings, *flags, **env)
        assert refused.returncode != 0 and refused.stdout == ""
        [line] = refused.stderr.splitlines()
        assert says in line and len(line) < 200


def test_a_fleet_and_the_bridge_write_to_the_cluster(
    cluster: LocalCluster, broker: LocalMosquitto
) -> None:
    on_cluster = make_settings(cluster.url, redis_cluster=True, shard_count=SHARDS)
    flush(cluster)
    show_shards(on_cluster, place=True)
    bridge = bridge_process(on_cluster, broker)
    wait_subscribed(bridge)
    aggregator = workers(on_cluster, "aggregate", 1)[0]
    devices = Devices(broker)
    try:
        fleet = telemetry(on_cluster, "simulate", "--fleet", "30", "--count", "20", "--rate",
                          "100", "--prefix", "fleet-")  # fmt: skip
        assert fleet.returncode == 0, fleet.stderr
        published = devices.publish(devices=12, per_device=25)
        wait_for(lambda: settled(on_cluster, GROUP) >= 600 + published, 60, "aggregation")
    finally:
        devices.close()
        for process in (bridge, aggregator):
            process.terminate()
            process.wait(10)
    # Every reading of every sensor, in its shard, counted once.
    stores = Stores.from_settings(on_cluster)
    counts = {}
    for sensor in [f"fleet-{i:02d}" for i in range(30)] + [f"dev-{d:03d}" for d in range(12)]:
        window = query.rolling(stores.of(sensor), sensor, "temp", 3_600_000)
        counts[sensor] = window.stats.count if window.stats else 0
    assert set(counts.values()) == {20, 25}
    assert sum(counts.values()) == settled(on_cluster, GROUP) == 600 + published
