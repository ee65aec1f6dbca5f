"""Batched, pipelined `XADD ... MAXLEN ~ N`: a batch goes out when it is full or when the caller
flushes (a simulator tick, an HTTP request, a bridge's burst of messages).

The writer encodes the whole batch as one RESP payload and sends it in one write, then reads one
reply per entry. redis-py's pipeline spends most of its time packing commands one at a time in
Python; packing the batch as a single string is what makes this writer several times faster.

Delivery is at-least-once: when the connection fails mid-batch the writer cannot know which
entries Redis stored, so the whole batch stays buffered and is sent again by the next flush.
Readings that carry `seq` are counted once downstream whatever the writer re-sends.

With a backlog limit the writer holds back: XINFO GROUPS travels with every batch, and while
the group furthest behind has that many entries unread or unacknowledged, a batch is refused
with StreamFull (a RedisUnavailable: callers keep the entries and try again later, as they do
while Redis is away) instead of being written and trimming entries the group has not read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

import redis

from ingest import metrics
from ingest.backlog import Backlog, largest_backlog
from ingest.durability import verify_durability
from ingest.errors import RedisCommandFailed, SettingsError, StreamFull
from ingest.keys import StreamKeys
from ingest.redis.errors import not_clustered, redis_errors

log = logging.getLogger(__name__)

Fields = Mapping[str, str]
# A backlog measured longer ago than this is measured again before a batch it would refuse.
BACKLOG_FRESH_S = 0.1


def _bulk(text: str) -> str:
    return f"${len(text.encode('utf-8', 'surrogateescape'))}\r\n{text}\r\n"


def pack_command(args: Sequence[str]) -> bytes:
    """RESP encoding of one command; used for the rare commands sent beside a batch."""
    return (f"*{len(args)}\r\n" + "".join(_bulk(a) for a in args)).encode(
        "utf-8", "surrogateescape"
    )


class XaddPacker:
    """Encodes batches of entries as `XADD stream MAXLEN ~ N * field value ...` commands."""

    def __init__(self, stream: str, maxlen: int) -> None:
        self._head_args = ["XADD", stream, "MAXLEN", "~", str(maxlen), "*"]
        self._head = "".join(_bulk(a) for a in self._head_args)

    def pack(self, batch: Sequence[Fields]) -> bytes:
        head = self._head
        parts: list[str] = []
        append = parts.append
        for fields in batch:
            append(f"*{6 + 2 * len(fields)}\r\n{head}")
            for name, value in fields.items():
                append(f"${len(name)}\r\n{name}\r\n${len(value)}\r\n{value}\r\n")
        payload = "".join(parts)
        if payload.isascii():
            return payload.encode("ascii")
        # The lengths above counted characters; non-ASCII text needs them counted in bytes.
        return b"".join(
            pack_command([*self._head_args, *[x for kv in fields.items() for x in kv]])
            for fields in batch
        )


class StreamWriter:
    """Buffers entries and writes them in batches; safe to share between threads.

    `add` flushes in the caller's thread once `batch_size` entries are waiting; `flush` writes
    what is buffered whenever the caller's own unit of work ends.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        maxlen: int,
        *,
        batch_size: int = 1000,
        durability: str | None = None,
        backlog_limit: int | None = None,
        shard_count: int | None = None,
    ) -> None:
        """`shard_count`: of a sharded deployment, checked against what the stream's first
        writer recorded before the first write."""
        self._client = client
        self._shard_count = shard_count
        # Entries a group may have unread or unacknowledged before writes wait (None: never).
        self._backlog_limit = backlog_limit
        self._backlog: Backlog | None = None
        self._backlog_at = 0.0
        # Checked against Redis's persistence settings before the first write (None: not).
        self._durability = durability
        self._keys = StreamKeys(stream)
        self._maxlen = maxlen
        self._packer = XaddPacker(stream, maxlen)
        self._batch_size = batch_size
        self._buffer: list[Fields] = []
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._meta_published = False
        self._written_metric = metrics.WRITTEN.labels(stream=stream)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def add(self, fields: Fields) -> None:
        """Buffer one entry; raises RedisUnavailable when a due flush fails (nothing is dropped)."""
        self.add_many((fields,))

    def add_many(self, entries: Sequence[Fields]) -> None:
        with self._buffer_lock:
            self._buffer.extend(entries)
            full = len(self._buffer) >= self._batch_size
        if full:
            self.flush()

    def flush(self) -> list[str]:
        """Write everything buffered; return the new entry IDs in order."""
        ids: list[str] = []
        with self._flush_lock:
            while True:
                with self._buffer_lock:
                    batch = self._buffer[: self._batch_size]
                    if not batch:
                        return ids
                ids.extend(self._send(batch))
                with self._buffer_lock:
                    del self._buffer[: len(batch)]
                self._written_metric.inc(len(batch))

    def write(self, entries: Sequence[Fields]) -> list[str]:
        """Write these entries now, in batches, bypassing the buffer; return their IDs in order.

        Calls from several threads run at once, each on its own connection from the pool.
        """
        ids: list[str] = []
        for start in range(0, len(entries), self._batch_size):
            batch = entries[start : start + self._batch_size]
            ids.extend(self._send(batch))
            self._written_metric.inc(len(batch))
        return ids

    def close(self) -> None:
        """Write what is left."""
        self.flush()

    def _send(self, batch: Sequence[Fields]) -> list[str]:
        if self._durability is not None:
            verify_durability(self._client, self._durability)
            self._durability = None
        self.verify_shard_count()
        self.check_backlog()
        payload = [self._packer.pack(batch)]
        if not self._meta_published:
            payload.insert(0, pack_command(["HSET", self._keys.meta, "maxlen", str(self._maxlen)]))
        if self._backlog_limit is not None:
            payload.append(pack_command(["XINFO", "GROUPS", self._keys.stream]))
        pool = self._client.connection_pool
        with redis_errors():
            conn = pool.get_connection()
            try:
                conn.send_packed_command(payload, check_health=False)  # type: ignore[no-untyped-call]
                if not self._meta_published:
                    conn.read_response()
                replies = [self._read_reply(conn) for _ in batch]
                if self._backlog_limit is not None:
                    self._measured(self._read_reply(conn))
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)
        self._meta_published = True
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors and isinstance(errors[0], redis.exceptions.AskError):
            raise not_clustered(errors[0])
        if errors:
            raise RedisCommandFailed(f"XADD to {self._keys.stream} failed: {errors[0]}")
        return [str(r) for r in replies]

    def verify_shard_count(self) -> None:
        """Refuse to write when the stream was written with another number of shards: its
        sensors would be split between two layouts. Checked once."""
        count = self._shard_count
        if count is None:
            return
        with redis_errors():
            pipe = self._client.pipeline(transaction=False)
            pipe.hsetnx(self._keys.meta, "shards", count)
            pipe.hget(self._keys.meta, "shards")
            _, recorded = pipe.execute()
        if recorded is not None and int(recorded) != count:
            raise SettingsError(
                f"{self._keys.stream} was written with {int(recorded)} shards; set "
                f"TELEMETRY_SHARDS={int(recorded)} (changing it moves sensors between shards)"
            )
        self._shard_count = None

    def check_backlog(self) -> None:
        """Raise StreamFull while the backlog is at the limit, measured again when stale."""
        limit = self._backlog_limit
        if limit is None or self._backlog is None or self._backlog.entries < limit:
            return
        if time.monotonic() - self._backlog_at > BACKLOG_FRESH_S:
            with redis_errors():
                try:
                    reply: object = self._client.xinfo_groups(self._keys.stream)
                except redis.ResponseError:  # no stream
                    reply = []
            self._measured(reply)
        if self._backlog is not None and self._backlog.entries >= limit:
            raise StreamFull(self._backlog.explain(self._maxlen))

    def _measured(self, reply: object) -> None:
        """Keep the backlog from an XINFO GROUPS reply."""
        refused = isinstance(reply, Exception) and "no such key" not in str(reply)
        if refused and self._backlog_limit is not None:
            # A Redis user without XINFO GROUPS: say so once, and write as under `trim`.
            log.warning("cannot see how far the groups are behind (%s); writing on", reply)
            self._backlog_limit = None
        groups = reply if isinstance(reply, list) else []
        self._backlog = largest_backlog(groups)
        self._backlog_at = time.monotonic()

    @staticmethod
    def _read_reply(conn: redis.connection.AbstractConnection) -> object:
        try:
            return conn.read_response(disconnect_on_error=False)
        except redis.ResponseError as exc:
            return exc
