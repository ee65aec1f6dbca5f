"""The stream writer for a sharded deployment: each entry goes to its sensor's shard, through
one `StreamWriter` per shard (each with its own connection, to the node serving that shard)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import redis

from ingest.redis.connection import connect
from ingest.redis.writer import Fields, StreamWriter
from ingest.settings import Settings
from ingest.shards import shard_of, shards


class EntryWriter(Protocol):
    """What producers write through, sharded or not."""

    @property
    def buffered(self) -> int: ...
    def add(self, fields: Fields) -> None: ...
    def add_many(self, entries: Sequence[Fields]) -> None: ...
    def flush(self) -> list[str]: ...
    def write(self, entries: Sequence[Fields]) -> list[str]: ...
    def close(self) -> None: ...


class ShardedWriter:
    """`StreamWriter`'s interface over one writer per shard; IDs come back in entry order."""

    def __init__(self, writers: Sequence[StreamWriter]) -> None:
        self._writers = list(writers)
        # The shard of every buffered entry, in the order they were added.
        self._order: list[int] = []
        self._lock = threading.Lock()

    @property
    def buffered(self) -> int:
        return sum(writer.buffered for writer in self._writers)

    def add(self, fields: Fields) -> None:
        self.add_many((fields,))

    def add_many(self, entries: Sequence[Fields]) -> None:
        self._verify()
        order, by_shard = self._split(entries)
        with self._lock:
            self._order.extend(order)
            for index, part in by_shard.items():
                self._writers[index].add_many(part)

    def flush(self) -> list[str]:
        self._verify()
        for writer in self._writers:
            if writer.buffered:
                writer.check_backlog()
        with self._lock:
            written: dict[int, Iterator[str]] = {}
            try:
                for index, writer in enumerate(self._writers):
                    if writer.buffered:
                        written[index] = iter(writer.flush())
            finally:
                # The shards written are done with, even when a later one failed.
                order = self._order
                self._order = [index for index in order if index not in written]
            return [next(written[index]) for index in order if index in written]

    def write(self, entries: Sequence[Fields]) -> list[str]:
        self._verify()
        order, parts = self._split(entries)
        # A shard that is full refuses the whole write before any shard takes its part, so a
        # caller told to send again later does not send the others' readings twice.
        for index in parts:
            self._writers[index].check_backlog()
        written = {index: iter(self._writers[index].write(part)) for index, part in parts.items()}
        return [next(written[index]) for index in order]

    def close(self) -> None:
        self.flush()

    def _verify(self) -> None:
        """Every shard checked before any is written to."""
        for writer in self._writers:
            writer.verify_shard_count()

    def _split(self, entries: Sequence[Fields]) -> tuple[list[int], dict[int, list[Fields]]]:
        """Each entry's shard, in order, and the entries of each shard."""
        order = [shard_of(fields.get("sensor_id", ""), len(self._writers)) for fields in entries]
        by_shard: dict[int, list[Fields]] = {}
        for index, fields in zip(order, entries, strict=True):
            by_shard.setdefault(index, []).append(fields)
        return order, by_shard


def open_writer(
    settings: Settings,
    *,
    batch_size: int | None = None,
    durability: str | None = None,
    client: redis.Redis | None = None,
) -> EntryWriter:
    """The writer of `settings`' stream, or of each of its shards; `client` serves an unsharded
    stream (a sharded one connects to each shard's node)."""
    every = shards(settings)
    writers = [
        StreamWriter(
            client if client is not None and len(every) == 1 else connect(shard.settings),
            shard.stream,
            settings.maxlen,
            batch_size=batch_size or settings.write_batch,
            durability=durability,
            backlog_limit=settings.backlog_limit,
            shard_count=len(every) if len(every) > 1 else None,
        )
        for shard in every
    ]
    return writers[0] if len(writers) == 1 else ShardedWriter(writers)
