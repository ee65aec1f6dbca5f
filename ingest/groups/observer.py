"""What a group runner tells the world: its counts (`RunnerStats`), Prometheus metrics and one
log line per notable event. The runner decides; this only reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from ingest import metrics
from ingest.backlog import backlog_warning
from ingest.contract.reading import entry_time_ms
from ingest.groups.batch import DeadEntry, RunnerStats

log = logging.getLogger("ingest.groups")


class RunnerObserver:
    def __init__(self, stream: str, dead_stream: str, group: str, consumer: str) -> None:
        self.stream = stream
        self.dead_stream = dead_stream
        self.group = group
        self.consumer = consumer
        self.stats = RunnerStats()
        self._labels = {"stream": stream, "group": group}
        self._outage_since: float | None = None
        # Every series present from the start, at zero, so a dashboard shows 0, not "No data".
        for outcome in ("processed", "dead_lettered", "trimmed"):
            metrics.GROUP_ENTRIES.labels(**self._labels, outcome=outcome)
        for family in (metrics.GROUP_HANDLER_ERRORS, metrics.GROUP_CLAIMED,
                       metrics.GROUP_COUNTER_REPAIRS):  # fmt: skip
            family.labels(**self._labels)
        metrics.REDIS_OUTAGES.labels(component=f"group:{group}")
        self._entry_age = metrics.GROUP_ENTRY_AGE.labels(**self._labels)

    def joined(self) -> None:
        log.info("consumer %s joined group %s on %s", self.consumer, self.group, self.stream)

    def redis_unavailable(self, error: Exception) -> None:
        """Once per outage."""
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        self.stats.redis_outages += 1
        metrics.REDIS_OUTAGES.labels(component=f"group:{self.group}").inc()
        log.warning("redis unavailable (%s); retrying with backoff", error)

    def redis_available(self) -> None:
        if self._outage_since is not None:
            log.info("redis is back after %.1fs", time.monotonic() - self._outage_since)
            self._outage_since = None

    def processed(self, count: int, oldest_id: str) -> None:
        self.stats.processed += count
        metrics.GROUP_ENTRIES.labels(**self._labels, outcome="processed").inc(count)
        self._entry_age.observe(max(0.0, time.time() - entry_time_ms(oldest_id) / 1000))

    def handler_error(self) -> None:
        self.stats.handler_errors += 1
        metrics.GROUP_HANDLER_ERRORS.labels(**self._labels).inc()

    def handler_failed(self, failed: Sequence[tuple[str, str]], of: int) -> None:
        first_id, first_error = failed[0]
        log.warning(
            "handler failed on %d of %d entries, left pending for retry (first: %s: %s)",
            len(failed), of, first_id, first_error,
        )  # fmt: skip

    def dead_lettered(self, dead: Sequence[DeadEntry]) -> None:
        self.stats.dead_lettered += len(dead)
        metrics.GROUP_ENTRIES.labels(**self._labels, outcome="dead_lettered").inc(len(dead))
        log.warning(
            "dead-lettered %d entries from group %s to %s (first: %s: %s)",
            len(dead), self.group, self.dead_stream, dead[0].entry_id, dead[0].reason,
        )  # fmt: skip

    def trimmed_pending(self, count: int) -> None:
        """Entries this group had read, whose data MAXLEN trimmed before they were processed."""
        self._trimmed(count)
        log.error(
            "group %s: %d pending entries were trimmed by MAXLEN before processing",
            self.group, count,
        )  # fmt: skip

    def trimmed_unread(self, count: int) -> None:
        """Entries MAXLEN trimmed before the group read them (-1: Redis lost the count)."""
        if count < 0:
            log.error(
                "group %s skipped entries trimmed by MAXLEN; Redis lost the count", self.group
            )
            return
        self._trimmed(count)
        log.error(
            "group %s lost %d entries to MAXLEN trimming before reading them", self.group, count
        )

    def _trimmed(self, count: int) -> None:
        self.stats.trimmed += count
        metrics.GROUP_ENTRIES.labels(**self._labels, outcome="trimmed").inc(count)

    def claimed(self, count: int) -> None:
        self.stats.claimed += count
        metrics.GROUP_CLAIMED.labels(**self._labels).inc(count)
        log.info("consumer %s claimed %d idle entries", self.consumer, count)

    def recovered(self, count: int) -> None:
        self.stats.recovered += count
        if count:
            log.info("consumer %s re-read %d of its own pending entries", self.consumer, count)

    def lag(self, lag: int, maxlen: int, warn_ratio: float) -> None:
        """Publish the group's lag and warn while trimming threatens entries it has not read."""
        metrics.GROUP_LAG.labels(**self._labels).set(lag)
        warning = backlog_warning(lag, maxlen, warn_ratio)
        if warning:
            log.warning("group %s: %s", self.group, warning)

    def consumers_removed(self, names: Sequence[str]) -> None:
        if names:
            log.info("removed %d idle consumers holding nothing: %s", len(names), names)

    def stopping(self) -> None:
        stats = self.stats
        log.info(
            "consumer %s stopping: processed=%d dead_lettered=%d trimmed=%d claimed=%d",
            self.consumer, stats.processed, stats.dead_lettered, stats.trimmed, stats.claimed,
        )  # fmt: skip
