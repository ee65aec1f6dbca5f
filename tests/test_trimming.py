"""MAXLEN trimming past a group's position: warned before, counted after, never silent."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import REGISTRY

from ingest.keys import StreamKeys
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from ingest.status import stream_status
from tests.helpers import Recorder, drain, pending_count, reading_runner

MAXLEN = 1000


def write(client: redis.Redis, count: int, start: int = 0) -> None:
    writer = StreamWriter(client, "app:event", MAXLEN, batch_size=100)
    for i in range(start, start + count):
        writer.add({"sensor_id": f"s{i % 10}", "seq": str(i // 10), "temp": "1"})
    writer.flush()


def trimmed_metric(settings: Settings) -> float:
    labels = {"stream": settings.stream, "group": "aggregates", "outcome": "trimmed"}
    return REGISTRY.get_sample_value("telemetry_group_entries_total", labels) or 0.0


def test_a_stopped_group_is_warned_about_then_its_loss_is_counted_exactly(
    client: redis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    reading_runner(client, settings, Recorder()).ensure_group()
    write(client, 900)
    before = stream_status(settings, settings.stream, 10**6, settings.trim_warn_ratio)
    [group] = before.groups
    assert before.maxlen == MAXLEN
    assert group.lag == 900 and group.lost_to_trimming == 0
    assert any("90% of MAXLEN 1000" in w for w in group.warnings)

    write(client, 5100, start=900)
    trimmed_before = trimmed_metric(settings)
    handler = Recorder()
    runner = reading_runner(client, settings, handler)
    drain(runner)

    assert runner.stats.trimmed > 0
    assert "trimming drops entries it has not read" in caplog.text
    assert f"lost {runner.stats.trimmed} entries to MAXLEN trimming" in caplog.text
    assert trimmed_metric(settings) - trimmed_before == runner.stats.trimmed
    assert len(handler.seen) == client.xlen(settings.stream)
    assert runner.stats.processed + runner.stats.trimmed == 6000
    assert int(client.hget(StreamKeys(settings.stream).lost, "aggregates") or 0) == (
        runner.stats.trimmed
    )
    after = stream_status(settings, settings.stream, 10**6, settings.trim_warn_ratio)
    assert after.groups[0].lost_to_trimming == runner.stats.trimmed
    assert after.groups[0].lag == 0
    assert any("were trimmed before" in w for w in after.groups[0].warnings)


@pytest.mark.parametrize(
    ("consumer", "claim_idle_ms", "recovered"),
    [
        # Another consumer claims them: XAUTOCLAIM reports their IDs as deleted.
        ("c1", 300, 0),
        # The same consumer restarts: re-reading its pending list returns them empty.
        ("c0", 600_000, 300),
    ],
)
def test_pending_entries_whose_data_was_trimmed_are_counted(
    client: redis.Redis, settings: Settings, consumer: str, claim_idle_ms: int, recovered: int
) -> None:
    reading_runner(client, settings, Recorder()).ensure_group()
    write(client, 600)
    # Consumer c0 takes 300 entries and dies holding them; the stream then moves on.
    client.xreadgroup("aggregates", "c0", {settings.stream: ">"}, count=300)
    write(client, 3000, start=600)
    handler = Recorder()
    runner = reading_runner(
        client, settings.replace(claim_idle_ms=claim_idle_ms), handler, consumer=consumer
    )
    drain(runner)

    assert runner.stats.recovered == recovered
    assert runner.stats.trimmed >= 300
    assert runner.stats.processed + runner.stats.trimmed == 3600
    assert pending_count(client, settings.stream, "aggregates") == 0
