"""`telemetry archive`: the archiver of each shard's stream, until stopped or drained.

Each stream has one archiver at a time: it holds a lease in Redis, kept while it runs; a second
one waits for the lease (a killed archiver's lapses after LEASE_MS). At start it removes the
files of a flush it never committed, then re-reads its own pending entries first, in order.
A thread of its own merges small files (compaction.py) at start and every COMPACT_EVERY_S; a
drain merges once more at the end."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from analytics.archive import GROUP
from analytics.archive.compaction import compact
from analytics.archive.files import remove_uncommitted, stream_folder
from analytics.archive.writer import CONSUMER, Archiver
from ingest.contract.columns import ReadingColumns, decode_columns
from ingest.contract.replycolumns import decode_layouts
from ingest.groups import GroupRunner, RunnerStats
from ingest.groups.shardrun import run_each
from ingest.keys import StreamKeys
from ingest.metrics import GROUP_WORKER, serve_metrics
from ingest.redis.connection import as_text, connect
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import LuaScript
from ingest.runtime import stop_on_signals
from ingest.settings import Settings
from ingest.shards import Shard, shards

log = logging.getLogger(__name__)

LEASE = LuaScript("analytics.archive", "lease.lua")
LEASE_MS = 5_000
TICK_S = 0.2
COMPACT_EVERY_S = 300


class Lease:
    def __init__(self, client: redis.Redis, keys: StreamKeys) -> None:
        self.client, self.key = client, keys.archiver
        self.holder = f"{socket.gethostname()}-{secrets.token_hex(4)}"

    def call(self, action: str) -> bool:
        with redis_errors():
            return bool(LEASE(self.client, [self.key], [action, self.holder, LEASE_MS]))

    def take(self, stop: threading.Event) -> bool:
        """Wait for the lease; False when stopped first."""
        if self.call("take"):
            return True
        with redis_errors():
            holder = self.client.get(self.key)
        log.warning("another archiver (%s) holds %s; waiting for it", as_text(holder or ""),
                    self.key)  # fmt: skip
        while not stop.wait(TICK_S * 5):
            if self.call("take"):
                return True
        return False


def archiver_runner(
    client: redis.Redis, settings: Settings, *, drain: bool
) -> tuple[GroupRunner[ReadingColumns], Archiver]:
    keys = StreamKeys(settings.stream)
    folder = stream_folder(Path(settings.archive_dir), settings.stream)
    with redis_errors():
        committed = as_text(client.get(keys.archived) or "0-0")
    removed = remove_uncommitted(folder, committed) if folder.exists() else 0
    if removed:
        log.info("removed %d files of a flush never committed (after %s)", removed, committed)
    # Draining writes what each batch brings at once: nothing may stay pending.
    archiver = Archiver(client, keys, folder, settings.archive_flush_ms,
                        1 if drain else settings.archive_flush_readings)  # fmt: skip
    # Entries wait here, unacknowledged, until their flush: the runner must not take them for
    # abandoned (claim them back, count deliveries, dead-letter them) meanwhile.
    patient = settings.replace(claim_idle_ms=max(settings.claim_idle_ms,
                                                 3 * settings.archive_flush_ms))  # fmt: skip
    runner = GroupRunner(
        client, patient, GROUP, CONSUMER, archiver, decode_columns,
        reads_per_batch=settings.reads_per_batch, decode_replies=decode_layouts,
    )  # fmt: skip
    return runner, archiver


def run_archiver(
    settings: Settings, *, drain: bool, serve: Sequence[Shard] | None = None
) -> RunnerStats:
    serve_metrics(settings.metrics_port, settings.metrics_host, GROUP_WORKER)
    stop = stop_on_signals()
    chosen = serve or shards(settings)
    leases = [Lease(connect(shard.settings), StreamKeys(shard.stream)) for shard in chosen]
    for lease in leases:
        if not lease.take(stop):
            return RunnerStats()
    made = [archiver_runner(connect(shard.settings), shard.settings, drain=drain)
            for shard in chosen]  # fmt: skip
    archivers = [archiver for _, archiver in made]
    ticking = threading.Thread(target=_tick, args=(archivers, leases, stop), daemon=True,
                               name="archive-tick")  # fmt: skip
    compacting = threading.Thread(target=_compacting, args=(archivers, stop, not drain),
                                  daemon=True, name="archive-compact")  # fmt: skip
    ticking.start()
    compacting.start()
    log.info("archiving %s to %s", ", ".join(s.stream for s in chosen), settings.archive_dir)
    try:
        stats = run_each([runner for runner, _ in made], stop, drain=drain)
        if drain:
            compacting.join()
            _compact_all(archivers, stop)
        return stats
    finally:
        stop.set()
        ticking.join(timeout=5)
        compacting.join()
        for archiver in archivers:
            archiver.flush_if_due(force=True)
        for lease in leases:
            lease.call("give")


def _compacting(archivers: Sequence[Archiver], stop: threading.Event, repeat: bool) -> None:
    """Merge small files now and, when `repeat`, every COMPACT_EVERY_S until stopped."""
    while True:
        try:
            _compact_all(archivers, stop)
        except Exception as exc:
            log.warning("archive compaction failed (%s); trying again later", exc)
        if not repeat or stop.wait(COMPACT_EVERY_S):
            return


def _compact_all(archivers: Sequence[Archiver], stop: threading.Event) -> None:
    for archiver in archivers:
        with redis_errors():
            committed = as_text(archiver.client.get(archiver.keys.archived) or "0-0")
        if archiver.folder.exists():
            compact(archiver.folder, committed, time.time_ns() // 1_000_000, stop)


def _tick(archivers: Sequence[Archiver], leases: Sequence[Lease], stop: threading.Event) -> None:
    """Flush what has waited long enough; keep the leases (a lease lost stops the archiver)."""
    while not stop.wait(TICK_S):
        try:
            for archiver in archivers:
                archiver.flush_if_due()
            if not all(lease.call("keep") for lease in leases):
                log.error("the archiver lease was lost (this process stalled?); stopping")
                stop.set()
        except Exception as exc:
            log.warning("archive flush or lease renewal failed (%s); trying again", exc)
