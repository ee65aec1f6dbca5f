"""Alert rules scoped by labels, and devices that say they went offline (real Redis)."""

from __future__ import annotations

import time

import pytest
import redis

from analytics.alerts import labelview
from ingest.devices import DeviceRegistry
from ingest.redis.connection import fields_arg
from ingest.settings import Settings
from tests.alerting import LiveWorker, changes, evaluate_all, write

HOT_IN_SITE_A = """
[[rule]]
name = "hot"
type = "threshold"
metric = "temp"
above = 30.0
labels = "site=a"
"""


def test_a_rule_scoped_by_labels_watches_the_sensors_they_pick_as_labels_change(
    client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labelview, "REFRESH_S", 0.0)
    registry = DeviceRegistry(settings)
    registry.label(["s1"], {"site": "a"}, [])
    registry.label(["s2"], {"site": "b"}, [])
    hot = [
        {"sensor_id": s, "temp": "35", "ts": str(1000 + i)}
        for i, s in enumerate(["s1", "s2", "s3"])
    ]
    write(client, settings.stream, hot, first_ms=1_700_000_000_000)
    evaluate_all(client, settings, HOT_IN_SITE_A)
    assert [(r["sensor_id"], r["state"]) for r in changes(client, settings.alerts_stream)] == [
        ("s1", "raised")
    ]
    registry.label(["s2"], {"site": "a"}, [])
    later = [{"sensor_id": "s2", "temp": "36", "ts": "2000"}]
    write(client, settings.stream, later, first_ms=1_700_000_001_000)
    evaluate_all(client, settings, HOT_IN_SITE_A)
    assert [(r["sensor_id"], r["state"]) for r in changes(client, settings.alerts_stream)] == [
        ("s1", "raised"), ("s2", "raised")
    ]  # fmt: skip


QUIET = """
[[rule]]
name = "quiet"
type = "silence"
after = "60s"
"""


def test_a_device_that_says_it_went_offline_is_silent_at_once_and_back_when_reborn(
    client: redis.Redis, settings: Settings
) -> None:
    worker = LiveWorker(client, settings.replace(block_ms=100), QUIET)

    def states() -> list[tuple[str, str]]:
        return [(r["sensor_id"], r["state"]) for r in changes(client, settings.alerts_stream)]

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(states()) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    try:
        for fields in ({"sensor_id": "n1", "temp": "1"}, {"sensor_id": "n2", "temp": "1"},
                       {"sensor_id": "n1", "online": "0"}):  # fmt: skip
            client.xadd(settings.stream, fields_arg(fields))
        started = time.monotonic()
        wait_for(1)
        # Within a sweep or two, not after the rule's 60 s.
        assert time.monotonic() - started < 5
        assert states() == [("n1", "raised")]
        client.xadd(settings.stream, fields_arg({"sensor_id": "n1", "online": "1"}))
        wait_for(2)
        assert states() == [("n1", "raised"), ("n1", "resolved")]
    finally:
        worker.stop()
