"""Writers hold back rather than let MAXLEN trim readings a group has not read: every reading
written while the only aggregator is stopped, or posted faster than it aggregates, is counted
once and none is trimmed unread."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import redis
from fastapi.testclient import TestClient

from analytics.aggregator import GROUP
from ingest.keys import SETTLED, StreamKeys
from ingest.settings import Settings
from telemetry.localserver import LocalMosquitto
from telemetry.web.app import create_app
from tests.conftest import child_env
from tests.test_bridge import Devices, bridge_process, wait_subscribed


def telemetry_process(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "telemetry", *args],
        env=child_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def entries_added(client: redis.Redis, stream: str) -> int:
    return int(client.xinfo_stream(stream)["entries-added"])


def wait_until_settled(
    client: redis.Redis, settings: Settings, total: int, timeout_s: float
) -> None:
    ledger = StreamKeys(settings.stream).ledger(GROUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if int(client.hget(ledger, f"{SETTLED}aggregated") or 0) >= total:
            return
        time.sleep(0.1)
    raise AssertionError(f"not all {total} readings aggregated in {timeout_s}s")


def wait_until_held(client: redis.Redis, settings: Settings) -> int:
    """Wait for the writers to stop at the limit (80 % of a MAXLEN of 1,000); what was
    written by then."""
    deadline = time.monotonic() + 30
    while entries_added(client, settings.stream) < 800 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)
    held_at = entries_added(client, settings.stream)
    assert 800 <= held_at < 1000
    return held_at


def assert_nothing_trimmed_unread(client: redis.Redis, settings: Settings, total: int) -> None:
    keys = StreamKeys(settings.stream)
    assert client.hgetall(keys.lost) == {}
    assert int(client.hget(keys.ledger(GROUP), f"{SETTLED}aggregated") or 0) == total
    assert int(client.zcard(keys.sensors)) > 0


def test_a_fleet_waits_while_the_only_aggregator_is_stopped(
    client: redis.Redis, settings: Settings
) -> None:
    small = settings.replace(maxlen=1000)
    client.xgroup_create(small.stream, GROUP, "0", mkstream=True)
    sensors, per_sensor = 40, 60
    fleet = telemetry_process(
        small, "simulate", "--fleet", str(sensors), "--rate", "20", "--count", str(per_sensor)
    )
    try:
        # The fleet writes up to the limit (80 % of MAXLEN), then holds its readings.
        held_at = wait_until_held(client, small)
        time.sleep(1.0)
        assert entries_added(client, small.stream) == held_at
        assert fleet.poll() is None
        aggregator = telemetry_process(small, "aggregate")
        try:
            assert fleet.wait(60) == 0
            wait_until_settled(client, small, sensors * per_sensor, 60)
        finally:
            aggregator.terminate()
            aggregator.wait(30)
    finally:
        fleet.kill()
        fleet.wait()
    assert entries_added(client, small.stream) == sensors * per_sensor
    assert_nothing_trimmed_unread(client, small, sensors * per_sensor)


def test_posts_faster_than_the_aggregator_get_429_and_lose_nothing(
    client: redis.Redis, settings: Settings
) -> None:
    small = settings.replace(maxlen=5000, read_batch=200)
    client.xgroup_create(small.stream, GROUP, "0", mkstream=True)
    refused = posted = 0
    with TestClient(create_app(small)) as api:
        # Nothing reads yet: posts are written until the backlog reaches the limit.
        while True:
            body = [{"sensor_id": f"s{i % 50}", "temp": i} for i in range(posted, posted + 500)]
            answer = api.post("/readings", json=body)
            if answer.status_code == 429:
                break
            assert answer.status_code == 202
            posted += len(body)
        assert answer.headers["Retry-After"] == "1"
        assert "group aggregates" in answer.json()["detail"]
        assert 4000 <= posted < 5000
        # With a slow aggregator running, a client that waits when told gets everything in.
        aggregator = telemetry_process(small, "aggregate")
        try:
            total = 30_000
            while posted < total:
                body = [{"sensor_id": f"s{i % 50}", "temp": i} for i in range(posted, posted + 500)]
                answer = api.post("/readings", json=body)
                if answer.status_code == 429:
                    refused += 1
                    time.sleep(0.05)
                    continue
                assert answer.status_code == 202
                posted += len(body)
            wait_until_settled(client, small, total, 60)
        finally:
            aggregator.terminate()
            aggregator.wait(30)
    assert refused > 0
    assert entries_added(client, small.stream) == total
    assert_nothing_trimmed_unread(client, small, total)


def test_the_bridge_holds_messages_unacknowledged_while_a_group_is_behind(
    client: redis.Redis, settings: Settings, broker: LocalMosquitto
) -> None:
    """The broker keeps what the bridge does not acknowledge: once the aggregator runs, every
    message arrives, once."""
    small = settings.replace(maxlen=1000)
    client.xgroup_create(small.stream, GROUP, "0", mkstream=True)
    bridge = bridge_process(small, broker)
    wait_subscribed(bridge)
    devices = Devices(broker)
    aggregator = None
    try:
        publishing = threading.Thread(target=devices.publish, args=(30, 100))
        publishing.start()
        wait_until_held(client, small)
        aggregator = telemetry_process(small, "aggregate")
        publishing.join(60)
        wait_until_settled(client, small, 3000, 60)
    finally:
        devices.close()
        for process in (bridge, aggregator):
            if process is not None:
                process.terminate()
                process.wait(30)
    assert entries_added(client, small.stream) == 3000
    assert_nothing_trimmed_unread(client, small, 3000)


def test_the_trim_policy_writes_on(client: redis.Redis, settings: Settings) -> None:
    trimming = settings.replace(maxlen=1000, backlog_policy="trim")
    client.xgroup_create(trimming.stream, GROUP, "0", mkstream=True)
    with TestClient(create_app(trimming)) as api:
        for start in range(0, 3000, 500):
            body = [{"sensor_id": "s1", "temp": i} for i in range(start, start + 500)]
            assert api.post("/readings", json=body).status_code == 202
    assert entries_added(client, trimming.stream) == 3000
    assert int(client.xlen(trimming.stream)) < 2000
