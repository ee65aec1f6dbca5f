"""The `archive` group's handler: readings gathered in memory, written as a flush of Parquet
files (files.py) once enough wait or the oldest has waited long enough, then committed in one
Redis transaction that acknowledges the flush's entries and records its last ID.

One archiver per stream (a lease in Redis), under one consumer name, reads the stream in order;
so every entry up to the recorded ID is in a committed file exactly once, and every later one is
pending or unread. A flush whose commit may or may not have happened (the connection dropped)
is settled by reading the recorded ID back before anything else is written.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis

from analytics.archive import GROUP
from analytics.archive.files import readings_table, write_flush
from ingest.contract.columns import Ints, ReadingColumns
from ingest.contract.reading import entry_order
from ingest.groups import Batch
from ingest.keys import StreamKeys
from ingest.redis.connection import as_text
from ingest.redis.errors import redis_errors

log = logging.getLogger(__name__)

CONSUMER = "archiver"
ACK_CHUNK = 10_000


@dataclass
class _Unsettled:
    """A flush written whose commit did not answer: its files, its last ID, and how many of
    the batches held it took."""

    files: list[Path]
    last_id: str
    batches: int


@dataclass
class Archiver:
    client: redis.Redis
    keys: StreamKeys
    folder: Path
    flush_ms: int
    flush_readings: int
    acknowledges: bool = True
    flushes: int = 0
    # The batches held, in the order read: their rows and their entry IDs.
    _tables: list[pa.Table] = field(default_factory=list)
    _batch_ids: list[list[str]] = field(default_factory=list)
    _held: set[str] = field(default_factory=set)
    _since: float | None = None
    _unsettled: _Unsettled | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        columns = batch.entries
        # An entry delivered again (claimed back after idling here) is held already.
        fresh = [row for row, entry_id in enumerate(columns.ids) if entry_id not in self._held]
        with self._lock:
            if fresh:
                if len(fresh) < len(columns):
                    columns = columns.take(_ints(fresh))
                self._tables.append(readings_table(columns))
                self._batch_ids.append(columns.ids)
                self._held.update(columns.ids)
                if self._since is None:
                    self._since = time.monotonic()
            if len(self._held) >= self.flush_readings:
                self._flush()

    @property
    def held(self) -> int:
        return len(self._held)

    def flush_if_due(self, *, force: bool = False) -> None:
        with self._lock:
            waited_ms = (time.monotonic() - (self._since or 0.0)) * 1000
            if self._held and (force or waited_ms >= self.flush_ms):
                self._flush()

    def _flush(self) -> None:
        self._settle()
        if not self._held:
            return
        ids = [entry_id for batch in self._batch_ids for entry_id in batch]
        first, last = min(ids, key=entry_order), max(ids, key=entry_order)
        files = write_flush(self.folder, pa.concat_tables(self._tables), first, last)
        self._unsettled = _Unsettled(files, last, len(self._tables))
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            for start in range(0, len(ids), ACK_CHUNK):
                pipe.xack(self.keys.stream, GROUP, *ids[start : start + ACK_CHUNK])
            pipe.set(self.keys.archived, last)
            pipe.execute()
        self._unsettled = None
        self.flushes += 1
        log.debug("archived %d readings to %d files, up to %s", len(ids), len(files), last)
        self._forget(len(self._tables))

    def _forget(self, batches: int) -> None:
        """Let go of the first batches held (their flush is committed)."""
        for ids in self._batch_ids[:batches]:
            self._held.difference_update(ids)
        del self._tables[:batches], self._batch_ids[:batches]
        self._since = time.monotonic() if self._held else None

    def _settle(self) -> None:
        """Decide a flush whose commit did not answer: done if Redis recorded it (its batches
        are let go), otherwise its files go and its readings are written again."""
        unsettled = self._unsettled
        if unsettled is None:
            return
        with redis_errors():
            recorded = self.client.get(self.keys.archived)
        if recorded is not None and entry_order(as_text(recorded)) >= entry_order(
            unsettled.last_id
        ):
            self._forget(unsettled.batches)
        else:
            for path in unsettled.files:
                path.unlink(missing_ok=True)
        self._unsettled = None


def _ints(rows: list[int]) -> Ints:
    return np.asarray(rows, np.int64)
