"""Redis itself killed with SIGKILL and restarted: from its append-only file, and from an older
snapshot. The ledger must balance afterwards, and what Redis forgot must be reported as loss."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from analytics.aggregator import GROUP
from analytics.worker import aggregator_runner
from ingest.durability import DurabilityError
from ingest.redis.connection import connect
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from ingest.status import GroupStatus, stream_status
from telemetry.localserver import LocalRedis
from tests.conftest import make_settings
from tests.helpers import drain

SENSORS = 50


def write_readings(settings: Settings, first: int, last: int) -> None:
    """Readings `first` to `last` - 1 of a fleet of SENSORS, each sensor counting its own seq."""
    writer = StreamWriter(connect(settings), settings.stream, 10**7, batch_size=1000)
    writer.write(
        [
            {"sensor_id": f"s{i % SENSORS}", "seq": str(i // SENSORS), "temp": str(i % 97)}
            for i in range(first, last)
        ]
    )


def aggregate_all(settings: Settings, consumer: str) -> None:
    drain(aggregator_runner(connect(settings), settings, consumer))


def group_info(client: redis.Redis) -> dict[str, Any]:
    groups: list[dict[str, Any]] = client.xinfo_groups("app:event")
    return next(g for g in groups if g["name"] == GROUP)


def aggregates_status(settings: Settings) -> GroupStatus:
    status = stream_status(settings, settings.stream, settings.maxlen, 0.8)
    return next(g for g in status.groups if g.name == GROUP)


def wait_rewritten(client: redis.Redis) -> None:
    client.bgrewriteaof()
    deadline = time.monotonic() + 30
    while int(client.info("persistence")["aof_rewrite_in_progress"]) or int(
        client.info("persistence")["aof_rewrite_scheduled"]
    ):
        assert time.monotonic() < deadline, "the append-only file was not rewritten"
        time.sleep(0.05)


@pytest.mark.parametrize("rewritten", [False, True], ids=["aof-as-written", "aof-rewritten"])
def test_the_ledger_balances_after_redis_restarts_from_its_append_only_file(
    tmp_path: Path, rewritten: bool
) -> None:
    server = LocalRedis(workdir=tmp_path / "redis", appendonly=True, appendfsync="always")
    server.start()
    try:
        settings = make_settings(server.url)
        write_readings(settings, 0, 6000)
        aggregate_all(settings, "before-1")
        if rewritten:
            # The file's base then holds the group's read counter as it stood here.
            wait_rewritten(connect(settings))
        write_readings(settings, 6000, 12_000)
        aggregate_all(settings, "before-2")
        assert group_info(connect(settings))["entries-read"] == 12_000

        server.kill()
        server.start()
        # The bug this guards against: Redis comes back with the counter lost or stale.
        assert group_info(connect(settings))["entries-read"] != 12_000

        write_readings(settings, 12_000, 18_000)
        aggregate_all(settings, "after")
        group = aggregates_status(settings)
        assert group.unaccounted == 0, group
        assert group.lag == 0
        assert group.lost_to_trimming == 0
        assert group.settled == {"aggregated": 18_000}
        assert group.warnings == []
        assert "stream_went_back" not in group.facts
    finally:
        server.close()


def test_a_restart_from_an_older_snapshot_is_reported_as_loss(tmp_path: Path) -> None:
    server = LocalRedis(workdir=tmp_path / "redis")
    server.start()
    try:
        settings = make_settings(server.url)
        client = connect(settings)
        write_readings(settings, 0, 5000)
        runner = aggregator_runner(client, settings, "survivor")
        stop = threading.Event()
        worker = threading.Thread(target=runner.run, args=(stop,))
        worker.start()
        try:
            wait_for(lambda: aggregated(settings) == 5000)
            client.save()
            # Written, acknowledged and aggregated after the snapshot: Redis will forget these.
            write_readings(settings, 5000, 8000)
            wait_for(lambda: aggregated(settings) == 8000)
            server.kill()
            server.start()
            write_readings(settings, 8000, 10_000)
            wait_for(lambda: aggregated(settings) == 7000)
        finally:
            stop.set()
            worker.join()
        group = aggregates_status(settings)
        # Everything Redis still has is accounted for...
        assert group.unaccounted == 0, group
        # ...and what it forgot is reported: the worker saw the stream go back, and each
        # sensor's seq jumped over the readings that were lost.
        assert group.facts["stream_went_back"] == 1
        assert any("Redis came back from older data" in w for w in group.warnings)
        assert group.facts["seq_gaps"] - group.facts.get("seq_gaps_filled", 0) == 3000
    finally:
        server.close()


def aggregated(settings: Settings) -> int:
    value = connect(settings).hget(f"{settings.stream}:ledger:{GROUP}", "settled:aggregated")
    return int(str(value or 0))


def wait_for(condition: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_durability_always_refuses_a_redis_that_does_not_sync_every_write(
    tmp_path: Path,
) -> None:
    server = LocalRedis(workdir=tmp_path / "redis", appendonly=True, appendfsync="everysec")
    server.start()
    try:
        settings = make_settings(server.url, durability="always")
        writer = StreamWriter(connect(settings), settings.stream, 1000, durability="always")
        writer.add({"sensor_id": "s1", "temp": "1"})
        with pytest.raises(DurabilityError, match="appendfsync always; this Redis has"):
            writer.flush()
        assert connect(settings).xlen(settings.stream) == 0
        connect(settings).config_set("appendfsync", "always")
        assert len(writer.flush()) == 1
    finally:
        server.close()
