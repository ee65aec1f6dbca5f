"""The extension points ARCHITECTURE.md names, each shown by adding a toy one."""

from __future__ import annotations

import collections

import redis

from ingest.contract.columns import ReadingColumns, decode_columns
from ingest.groups import Batch, GroupRunner
from ingest.redis.connection import read_range
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from tests.helpers import drain


class ReadingsPerSensor:
    """A toy analysis: how many readings each sensor sent. The runner acknowledges a batch
    once this returns; an entry that breaks the contract never reaches it."""

    acknowledges = False

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        readings = batch.entries
        self.counts.update(readings.sensors[k] for k in readings.sensor.tolist())


def test_a_consumer_group_is_a_handler_and_a_group_name(
    client: redis.Redis, settings: Settings
) -> None:
    writer = StreamWriter(client, settings.stream, settings.maxlen)
    writer.write([{"sensor_id": f"s{i % 3}", "temp": str(i)} for i in range(3000)])
    writer.write([{"sensor_id": "s0", "temp": "not a number"}])
    handler = ReadingsPerSensor()
    drain(GroupRunner(client, settings, "per-sensor", "c1", handler, decode_columns))
    assert handler.counts == {"s0": 1000, "s1": 1000, "s2": 1000}
    # The bad reading went to the dead-letter stream with its reason; nothing is pending.
    dead = read_range(client, f"{settings.stream}:dead")
    assert len(dead) == 1 and "temp" in dead[0][1]["reason"]
    assert client.xpending(settings.stream, "per-sensor")["pending"] == 0
