"""`/groups` and `/metrics`: the facts `telemetry status` reports, for machines.

Metrics are read from Redis when scraped, so any API process reports the whole system: the
ingest rate (as a counter of entries ever added), each group's lag and pending entries, dead
letters, how far the coarse tiers' roll-up is behind, and alert counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence

import walrus
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from analytics.alerts.listing import AlertSources
from analytics.alerts.rules import SEVERITIES
from ingest.redis.errors import redis_errors
from ingest.settings import Settings
from ingest.shards import shards
from ingest.status import StreamStatus, stream_status


class SystemStatus:
    """What `telemetry status` reports for each shard, gathered through clients kept for
    every call."""

    def __init__(self, settings: Settings, dbs: Sequence[walrus.Database]) -> None:
        self.settings = settings
        self._shards = list(zip(shards(settings), dbs, strict=True))

    def __call__(self) -> list[StreamStatus]:
        maxlen, ratio = self.settings.maxlen, self.settings.trim_warn_ratio
        return [stream_status(db, shard.stream, maxlen, ratio) for shard, db in self._shards]


class SystemCollector(Collector):
    def __init__(self, alert_sources: AlertSources, status: SystemStatus) -> None:
        self.alert_sources = alert_sources
        self.status = status

    def collect(self) -> Iterator[Metric]:
        statuses = self.status()
        added = CounterMetricFamily(
            "telemetry_stream_entries_added", "entries ever added to the stream", labels=["stream"]
        )
        gauges = [
            (GaugeMetricFamily(name, help_text, labels=["stream"]), attribute)
            for name, help_text, attribute in (
                ("telemetry_stream_length", "entries in the stream now", "length"),
                ("telemetry_stream_maxlen", "the stream's MAXLEN", "maxlen"),
                ("telemetry_dead_letters", "entries in the dead-letter stream", "dead_letters"),
            )
        ]
        lag = GaugeMetricFamily("telemetry_group_lag", "entries not yet read by the group",
                                labels=["stream", "group"])  # fmt: skip
        pending = GaugeMetricFamily("telemetry_group_pending", "entries read, not acknowledged",
                                    labels=["stream", "group"])  # fmt: skip
        behind = GaugeMetricFamily(
            "telemetry_rollup_behind_seconds",
            "how far the coarse tiers' roll-up of the finest tier is behind the clock",
            labels=["stream"],
        )
        for status in statuses:
            stream = status.stream
            added.add_metric([stream], status.entries_added)
            for gauge, attribute in gauges:
                gauge.add_metric([stream], getattr(status, attribute))
            for group in status.groups:
                if group.lag is not None:
                    lag.add_metric([stream, group.name], group.lag)
                pending.add_metric([stream, group.name], group.pending)
            if status.rolled_up_to_ms is not None:
                behind.add_metric([stream], time.time() - status.rolled_up_to_ms / 1000)
        yield added
        yield from (gauge for gauge, _ in gauges)
        yield lag
        yield pending
        if behind.samples:
            yield behind
        yield from self._alerts()

    def _alerts(self) -> Iterator[Metric]:
        by_severity: dict[str, int] = {}
        added = 0
        for client, keys in self.alert_sources:
            with redis_errors():
                open_alerts: list[str] = client.hvals(keys.open)  # type: ignore[assignment]
                exists = client.exists(keys.stream)
                info = client.xinfo_stream(keys.stream) if exists else {}
            for text in open_alerts:
                severity = json.loads(text).get("severity", "")
                by_severity[severity] = by_severity.get(severity, 0) + 1
            added += int(info.get("entries-added", 0))
        gauge = GaugeMetricFamily("telemetry_alerts_open", "alerts open now", labels=["severity"])
        for severity in sorted({*SEVERITIES, *by_severity}):
            gauge.add_metric([severity], by_severity.get(severity, 0))
        yield gauge
        changes = CounterMetricFamily("telemetry_alert_changes", "alert changes ever recorded")
        changes.add_metric([], added)
        yield changes
