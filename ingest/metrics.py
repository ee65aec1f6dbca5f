"""Prometheus metrics of the ingest package, served over HTTP when a port is configured.

Every metric lives in prometheus_client's process-wide registry, but a process serves only the
families of what it does (`serve_metrics`): an aggregator has no bridge gauges to show.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

GROUP_ENTRIES = Counter(
    "telemetry_group_entries",
    "Entries a consumer-group worker settled, by outcome "
    "(processed, dead_lettered, trimmed: lost to MAXLEN before processing)",
    ["stream", "group", "outcome"],
)
GROUP_COUNTER_REPAIRS = Counter(
    "telemetry_group_entries_read_repairs",
    "Times a worker found its group's read counter lost by Redis and set it from the ledger",
    ["stream", "group"],
)
GROUP_CLAIMED = Counter(
    "telemetry_group_claimed_entries",
    "Entries claimed from consumers that left them idle",
    ["stream", "group"],
)
GROUP_HANDLER_ERRORS = Counter(
    "telemetry_group_handler_errors", "Handler calls that raised", ["stream", "group"]
)
GROUP_LAG = Gauge(
    "telemetry_group_lag", "Entries in the stream the group has not read yet", ["stream", "group"]
)
REDIS_OUTAGES = Counter(
    "telemetry_redis_outages", "Times a component lost its connection to Redis", ["component"]
)
WRITTEN = Counter("telemetry_written_entries", "Entries written to a stream", ["stream"])
GROUP_ENTRY_AGE = Histogram(
    "telemetry_group_entry_age_seconds",
    "Age of a batch's oldest entry (since it was added to the stream) when the group settled "
    "the batch: how far behind the live stream the group's results are",
    ["stream", "group"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)

# What each kind of process serves, by family name prefix.
WRITER = ("telemetry_written_entries", "telemetry_redis_outages")
GROUP_WORKER = (*WRITER, "telemetry_group_")
_EVERY_PROCESS = ("process_", "python_")


class Exported(Collector):
    """The families of the process-wide registry whose names start with the prefixes given."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self.prefixes = (*prefixes, *_EVERY_PROCESS)

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if family.name.startswith(self.prefixes):
                yield family


def serve_metrics(port: int | None, host: str, exported: Sequence[str]) -> None:
    """Serve /metrics on the port in a background thread, the families whose names start with
    the `exported` prefixes; no-op when the port is None."""
    if port is None:
        return
    registry = CollectorRegistry(auto_describe=True)
    registry.register(Exported(exported))
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics served on %s:%d/metrics", host, port)
