"""`telemetry aggregate`: one worker of the `aggregates` consumer group."""

from __future__ import annotations

import os
import socket

import redis

from analytics.aggregator import GROUP, Aggregator
from analytics.limits import Limits, ReadingLimits
from analytics.tiers import parse_tiers
from ingest.contract.columns import ReadingColumns, decode_columns
from ingest.contract.replycolumns import decode_layouts
from ingest.groups import GroupRunner, RunnerStats
from ingest.keys import StreamKeys
from ingest.metrics import serve_metrics
from ingest.redis.connection import connect
from ingest.runtime import stop_on_signals
from ingest.settings import Settings


def default_consumer_name() -> str:
    """Unique per process, so a restarted worker never re-reads another's entries as its own."""
    return f"{socket.gethostname()}-{os.getpid()}"


def aggregator_runner(
    client: redis.Redis, settings: Settings, consumer: str, group: str = GROUP
) -> GroupRunner[ReadingColumns]:
    """One consumer of the aggregates group (another group name keeps benchmark runs apart)."""
    keys, tiers = StreamKeys(settings.stream), parse_tiers(settings.tiers)
    handler = Aggregator(client, keys, tiers, group=group)
    limits = Limits(settings.max_metrics_per_reading, settings.max_metric_names,
                    settings.max_sensors)  # fmt: skip
    return GroupRunner(
        client, settings, group, consumer, handler, decode_columns,
        reads_per_batch=settings.reads_per_batch, decode_replies=decode_layouts,
        admit=ReadingLimits(client, keys, limits),
    )  # fmt: skip


def run_aggregator(settings: Settings, consumer: str | None, *, drain: bool) -> RunnerStats:
    serve_metrics(settings.metrics_port, settings.metrics_host)
    runner = aggregator_runner(connect(settings), settings, consumer or default_consumer_name())
    stats = runner.run(stop_on_signals(), drain=drain)
    if isinstance(runner.handler, Aggregator) and runner.handler.fatal is not None:
        raise runner.handler.fatal
    return stats
