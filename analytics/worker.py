"""`telemetry aggregate`: one worker of the `aggregates` consumer group."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

import redis

from analytics.aggregator import GROUP, Aggregator
from analytics.limits import Limits, ReadingLimits
from analytics.tiers import parse_tiers
from ingest.contract.columns import ReadingColumns, decode_columns
from ingest.contract.replycolumns import decode_layouts
from ingest.groups import GroupRunner, RunnerStats
from ingest.groups.shardrun import run_each
from ingest.keys import StreamKeys
from ingest.metrics import GROUP_WORKER, serve_metrics
from ingest.redis.connection import connect
from ingest.runtime import stop_on_signals
from ingest.settings import Settings
from ingest.shards import Shard, shards


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


def run_aggregator(
    settings: Settings, consumer: str | None, *, drain: bool, serve: Sequence[Shard] | None = None
) -> RunnerStats:
    """Serve the shards in `serve` (default: every one) until stopped, or drained."""
    serve_metrics(settings.metrics_port, settings.metrics_host, GROUP_WORKER)
    name = consumer or default_consumer_name()
    runners = [aggregator_runner(connect(shard.settings), shard.settings, name)
               for shard in (serve or shards(settings))]  # fmt: skip
    stats = run_each(runners, stop_on_signals(), drain=drain)
    for runner in runners:
        if isinstance(runner.handler, Aggregator) and runner.handler.fatal is not None:
            raise runner.handler.fatal
    return stats
