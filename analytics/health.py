"""`/groups` and `/metrics`: the facts `telemetry status` reports, for machines.

Metrics are read from Redis when scraped, so any API process reports the whole system: the
ingest rate (as a counter of entries ever added), each group's lag and pending entries, dead
letters, how far the coarse tiers' roll-up is behind, and alert counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import redis
import walrus
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.keys import AlertKeys
from ingest.redis.errors import redis_errors
from ingest.settings import Settings
from ingest.status import StreamStatus, stream_status


class SystemStatus:
    """What `telemetry status` reports, gathered through one client kept for every call."""

    def __init__(self, settings: Settings, db: walrus.Database) -> None:
        self.settings = settings
        self._db = db

    def __call__(self) -> StreamStatus:
        settings = self.settings
        return stream_status(self._db, settings.stream, settings.maxlen, settings.trim_warn_ratio)


class SystemCollector(Collector):
    def __init__(self, settings: Settings, client: redis.Redis, status: SystemStatus) -> None:
        self.settings = settings
        self.client = client
        self.status = status
        self.alert_keys = AlertKeys(settings.alerts_stream)

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        stream = status.stream
        added = CounterMetricFamily(
            "telemetry_stream_entries_added", "entries ever added to the stream", labels=["stream"]
        )
        added.add_metric([stream], status.entries_added)
        yield added
        for name, help_text, value in (
            ("telemetry_stream_length", "entries in the stream now", status.length),
            ("telemetry_stream_maxlen", "the stream's MAXLEN", status.maxlen),
            ("telemetry_dead_letters", "entries in the dead-letter stream", status.dead_letters),
        ):
            gauge = GaugeMetricFamily(name, help_text, labels=["stream"])
            gauge.add_metric([stream], value)
            yield gauge
        lag = GaugeMetricFamily("telemetry_group_lag", "entries not yet read by the group",
                                labels=["stream", "group"])  # fmt: skip
        pending = GaugeMetricFamily("telemetry_group_pending", "entries read, not acknowledged",
                                    labels=["stream", "group"])  # fmt: skip
        for group in status.groups:
            if group.lag is not None:
                lag.add_metric([stream, group.name], group.lag)
            pending.add_metric([stream, group.name], group.pending)
        yield lag
        yield pending
        if status.rolled_up_to_ms is not None:
            behind = GaugeMetricFamily(
                "telemetry_rollup_behind_seconds",
                "how far the coarse tiers' roll-up of the finest tier is behind the clock",
                labels=["stream"],
            )
            behind.add_metric([stream], time.time() - status.rolled_up_to_ms / 1000)
            yield behind
        yield from self._alerts()

    def _alerts(self) -> Iterator[Metric]:
        with redis_errors():
            open_alerts: list[str] = self.client.hvals(self.alert_keys.open)  # type: ignore[assignment]
            exists = self.client.exists(self.alert_keys.stream)
            info = self.client.xinfo_stream(self.alert_keys.stream) if exists else {}
        by_severity: dict[str, int] = {}
        for text in open_alerts:
            severity = json.loads(text).get("severity", "")
            by_severity[severity] = by_severity.get(severity, 0) + 1
        gauge = GaugeMetricFamily("telemetry_alerts_open", "alerts open now", labels=["severity"])
        for severity, count in sorted(by_severity.items()):
            gauge.add_metric([severity], count)
        yield gauge
        changes = CounterMetricFamily("telemetry_alert_changes", "alert changes ever recorded")
        changes.add_metric([], int(info.get("entries-added", 0)))
        yield changes
