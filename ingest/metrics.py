"""Prometheus metrics of the ingest package, served over HTTP when a port is configured."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, start_http_server

log = logging.getLogger(__name__)

GROUP_ENTRIES = Counter(
    "telemetry_group_entries",
    "Entries a consumer-group worker settled, by outcome "
    "(processed, dead_lettered, trimmed: lost to MAXLEN before processing)",
    ["stream", "group", "outcome"],
)
GROUP_COUNTER_REPAIRS = Counter(
    "telemetry_group_read_counter_repairs",
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


def serve_metrics(port: int | None, host: str) -> None:
    """Serve /metrics on the port in a background thread; no-op when the port is None."""
    if port is None:
        return
    start_http_server(port, addr=host)
    log.info("metrics served on %s:%d/metrics", host, port)
