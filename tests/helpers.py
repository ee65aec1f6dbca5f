"""Small pieces several tests share."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import redis

from analytics.aggregator import GROUP, Aggregator
from analytics.tiers import parse_tiers
from ingest.contract.columns import ReadingColumns, decode_columns
from ingest.contract.reading import Reading
from ingest.groups import Batch, GroupRunner
from ingest.keys import StreamKeys
from ingest.redis.connection import fields_arg, read_range
from ingest.settings import Settings


class Recorder:
    """A handler that remembers what it processed, optionally failing on some entries."""

    acknowledges = False

    def __init__(self, fail_if: Callable[[Reading], bool] | None = None) -> None:
        self.seen: list[str] = []
        self.fail_if = fail_if

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        readings = batch.entries
        if self.fail_if is not None and any(
            self.fail_if(readings.reading(row)) for row in range(len(readings))
        ):
            raise ValueError("refusing this reading")
        self.seen.extend(batch.ids)


def reading_runner(
    client: redis.Redis, settings: Settings, handler: Recorder, consumer: str = "c1"
) -> GroupRunner[ReadingColumns]:
    return GroupRunner(client, settings, "aggregates", consumer, handler, decode_columns)


def drain(runner: GroupRunner[ReadingColumns], timeout_s: float = 60.0) -> None:
    """Run until the group has nothing left, failing the test if that takes too long."""
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        runner.run(stop, drain=True)
    finally:
        timer.cancel()
    assert not stop.is_set(), "runner did not drain in time"


class AggregatorWithoutRollup:
    """The aggregator's batches without its roll-up, so that a test decides when that runs."""

    acknowledges = True

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        self.aggregator(batch)


def drain_without_rollup(client: redis.Redis, settings: Settings) -> None:
    """Drain the aggregates group, leaving the coarse tiers' roll-up where it was."""
    handler = Aggregator(client, StreamKeys(settings.stream), parse_tiers(settings.tiers))
    drain(GroupRunner(client, settings, GROUP, "c1", AggregatorWithoutRollup(handler),
                      decode_columns))  # fmt: skip


def pending_count(client: redis.Redis, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def entries(
    client: redis.Redis, stream: str, count: int | None = None
) -> list[tuple[str, dict[str, str]]]:
    return read_range(client, stream, count=count)


def add(client: redis.Redis, stream: str, fields: Mapping[str, str]) -> str:
    return str(client.xadd(stream, fields_arg(fields)))
