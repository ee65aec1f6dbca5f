"""`telemetry aggregate`: one worker of the `aggregates` consumer group."""

from __future__ import annotations

import os
import socket

from analytics.aggregator import GROUP, Aggregator
from analytics.tiers import parse_tiers
from ingest.connection import connect
from ingest.groups import GroupRunner, RunnerStats
from ingest.keys import StreamKeys
from ingest.metrics import serve_metrics
from ingest.reading import Reading
from ingest.runtime import stop_on_signals
from ingest.settings import Settings


def default_consumer_name() -> str:
    """Unique per process, so a restarted worker never re-reads another's entries as its own."""
    return f"{socket.gethostname()}-{os.getpid()}"


def run_aggregator(settings: Settings, consumer: str | None, *, drain: bool) -> RunnerStats:
    serve_metrics(settings.metrics_port)
    client = connect(settings)
    handler = Aggregator(client, StreamKeys(settings.stream), parse_tiers(settings.tiers))
    runner = GroupRunner(
        client, settings, GROUP, consumer or default_consumer_name(), handler, Reading.decode
    )
    return runner.run(stop_on_signals(), drain=drain)
