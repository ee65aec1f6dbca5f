"""Consumer-group runner: everything between a stream and a batch handler, losing nothing.

One runner is one consumer in one group. It

- creates the group (MKSTREAM; an existing group is fine; recreated if the stream was deleted),
- first re-reads its own pending entries (left by an earlier run under the same name),
- reads new entries in batches, each read in one MULTI with a check that counts entries MAXLEN
  trimmed before the group reached them (while a backlog waits, consecutive full reads can make
  one batch, and the next reads are sent before a batch is processed),
- claims entries other consumers left idle (XAUTOCLAIM, following the cursor; IDs Redis reports
  as deleted were trimmed and are counted as lost), counting each claim as a hand-over, so a
  handler can tell a batch read as new is still all its own (see `Batch.handovers`),
- decodes a batch at once (see `entries`; new entries straight from the bytes of the reads'
  replies when it has a decoder for them, see `resp`), and dead-letters the entries its decoder
  refuses and entries delivered more than `max_deliveries` times, each in one transaction with
  its XACK,
- hands the handler whole batches and acknowledges only after the handler returns (or lets the
  handler acknowledge atomically with its own writes); a handler that prepares a batch apart
  from writing it has its writes run while the next batch is decoded and prepared,
- isolates an entry that makes the handler fail by splitting the batch, so the rest flows,
- backs off and recovers when Redis goes away, and stops between batches when asked.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import redis
from redis.client import CaseInsensitiveDict

from ingest import metrics
from ingest.backlog import backlog_warning
from ingest.backoff import Backoff
from ingest.deadletter import dead_letter_record, queue_dead_letter
from ingest.entries import BatchDecoder, D, Decoded, FlatFields, ReplyDecoder, as_mapping
from ingest.errors import RedisCommandFailed, RedisUnavailable, redis_errors
from ingest.keys import StreamKeys
from ingest.reading import entry_order
from ingest.resp import EntryLayout, hiredis_replies, parse_reads, read_until
from ingest.scripts import LuaScript
from ingest.settings import Settings

log = logging.getLogger(__name__)

D_contra = TypeVar("D_contra", bound=Decoded, contravariant=True)

ENSURE_GROUP = LuaScript("ingest", "ensure_group.lua")
CLAIM_IDLE = LuaScript("ingest", "claim_idle.lua")
TRIM_CHECK = LuaScript("ingest", "trim_check.lua")
FORGET_CONSUMERS = LuaScript("ingest", "forget_consumers.lua")
# A consumer that holds nothing and was idle this long is removed from its group.
FORGET_IDLE_MS = 3_600_000
# Reads are sent ahead only while a batch takes less than this share of claim_idle_ms: what they
# deliver waits for the batch in hand, and must not look idle enough for others to claim.
READ_AHEAD_IDLE_SHARE = 0.1
# How long a runner with deferred batches waits before offering them again.
DEFERRED_RETRY_S = 0.001
DEFERRED_RETRY_MAX_S = 0.1

# Entries as Redis sends them: ID and flat fields; no fields when the data was trimmed away.
RawEntry = tuple[str, FlatFields | None]
# What one read delivered: entries parsed by hiredis, or laid out in the reply's bytes.
_ReadEntries = list[RawEntry] | EntryLayout
# A read: what the trim check counted as lost, the group's last-delivered ID before it, its
# entries, the hand-over count.
_Read = tuple[int, str, _ReadEntries, int]
# An entry to dead-letter: ID, reason, delivery count, original fields.
DeadEntry = tuple[str, str, int, Mapping[str, str]]
# Replies the runner parses itself: redis-py would build a dict per entry first.
_RAW_REPLIES = ("XREADGROUP", "XAUTOCLAIM")


class Abort(Exception):
    """Raised by a handler that cannot go on (its output is gone): the batch stays pending and
    the runner stops."""


# Errors that end a batch's handling and reach the run loop instead of counting as a failure.
_STOPPING = (Abort, RedisUnavailable, redis.ConnectionError, redis.TimeoutError)


class Deferred(Exception):
    """Raised by a handler that must let older entries go first (it settles entries in stream
    order): the batch stays pending with this consumer and the runner offers it again shortly,
    reading nothing new meanwhile. Not a failure: it counts towards no dead-lettering."""


class ScriptsFlushed(Exception):
    """The server forgot a Lua script between loading and use."""


@dataclass(frozen=True)
class Batch(Generic[D]):
    stream: str
    group: str
    consumer: str
    entries: D
    # For entries this consumer read as new: the group's hand-over count when it read them
    # (see `StreamKeys.handovers`). While the count is unchanged, no other consumer took them
    # and this one did not re-read them. None for entries delivered before (claimed, re-read).
    handovers: int | None = None

    @property
    def ids(self) -> list[str]:
        return self.entries.ids


class BatchHandler(Protocol[D_contra]):  # type: ignore[misc]
    """Processes a batch. Raising leaves the batch pending; it is retried and, entry by entry,
    dead-lettered after `max_deliveries`. A handler whose `acknowledges` is True XACKs the
    entries itself, atomically with its effects; otherwise the runner XACKs after it returns."""

    acknowledges: bool

    def __call__(self, batch: Batch[D_contra]) -> None: ...


@runtime_checkable
class PreparingHandler(Protocol[D_contra]):  # type: ignore[misc]
    """A handler whose `prepare` does all its work but the writes, and returns the call that
    makes them (and acknowledges). While a backlog waits the runner runs that call in a second
    thread while it decodes and prepares the next batch, so Redis and Python work at the same
    time. The call must not touch state `prepare` reads without replacing it whole."""

    acknowledges: bool

    def __call__(self, batch: Batch[D_contra]) -> None: ...

    def prepare(self, batch: Batch[D_contra]) -> Callable[[], None]: ...


@runtime_checkable
class UpkeepingHandler(Protocol):
    """A handler with work of its own beside the batches (such as rolling up what they wrote)."""

    def upkeep(self, stop: threading.Event) -> None:
        """Runs in a thread of its own while the runner runs, until `stop` is set."""

    def drained(self) -> None:
        """Called once a drain has processed everything, before `run` returns."""


@dataclass
class RunnerStats:
    processed: int = 0
    dead_lettered: int = 0
    trimmed: int = 0
    claimed: int = 0
    handler_errors: int = 0
    redis_outages: int = 0
    recovered: int = 0


@dataclass
class _Failures:
    """Last handler error per entry ID, so a dead letter can say what went wrong; bounded."""

    limit: int = 10_000
    errors: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def record(self, entry_id: str, error: str) -> None:
        self.errors[entry_id] = error
        self.errors.move_to_end(entry_id)
        while len(self.errors) > self.limit:
            self.errors.popitem(last=False)

    def pop(self, entry_id: str) -> str | None:
        return self.errors.pop(entry_id, None)


@dataclass
class _SentReads:
    """Reads sent on a pool connection of their own, their replies not read yet."""

    connection: Any
    count: int


def _entries_of(piece: _ReadEntries) -> Sequence[RawEntry]:
    return piece.entries() if isinstance(piece, EntryLayout) else piece


def _last_id(piece: _ReadEntries) -> str:
    return piece.last_id() if isinstance(piece, EntryLayout) else piece[-1][0]


def _stream_entries(reply: Any) -> list[RawEntry]:
    """The entries of an XREADGROUP reply for one stream (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    return list(reply[0][1])


class GroupRunner(Generic[D]):
    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        group: str,
        consumer: str,
        handler: BatchHandler[D],
        decode: BatchDecoder[D],
        *,
        stream: str | None = None,
        start_id: str = "0",
        reads_per_batch: int = 1,
        decode_replies: ReplyDecoder[D] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.keys = StreamKeys(stream or settings.stream)
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.decode = decode
        # Decodes new entries from the bytes of the reads' replies (see `resp`); `decode` takes
        # what it gives up on.
        self.decode_replies = decode_replies
        # The ECHO sent after the reads, and its reply: the replies' bytes end with it.
        self._reply_ending = secrets.token_hex(16)
        self._reply_ending_bytes = (
            f"${len(self._reply_ending)}\r\n{self._reply_ending}\r\n".encode()
        )
        self.start_id = start_id
        self.reads_per_batch = reads_per_batch
        self.stats = RunnerStats()
        self._failures = _Failures()
        self._last_delivered = "0-0"
        # The newest entry this runner read as new: a group Redis says has read less lost it.
        self._read_up_to = "0-0"
        # Reads to send at once next time: more while a backlog waits.
        self._reads_next = 1
        # While a backlog waits, the next reads are sent before this batch is processed, so
        # Redis runs them meanwhile.
        self._sent: _SentReads | None = None
        # How long the last batch read took to read and process.
        self._batch_s = 0.0
        self._labels = {"stream": self.keys.stream, "group": group}
        self._claim_every_s = min(settings.claim_idle_ms / 2000, 5.0)
        # Batches the handler deferred, oldest first; offered again before anything new is read.
        self._deferred: list[D] = []
        self._deferred_rounds = 0
        self._deferred_since = 0.0
        # The handler when it prepares apart from writing; a batch prepared and not yet
        # written, and the thread that writes one meanwhile.
        self._preparer: PreparingHandler[D] | None = (
            handler if isinstance(handler, PreparingHandler) else None
        )
        self._prepared: tuple[D, Callable[[], None]] | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._raw_callbacks = CaseInsensitiveDict(
            {
                name: callback
                for name, callback in client.response_callbacks.items()
                if name.upper() not in _RAW_REPLIES
            }
        )

    def _pipeline(self, *, transaction: bool) -> Any:
        """A pipeline on the runner's client that leaves stream replies as Redis sent them."""
        pipe = self.client.pipeline(transaction=transaction)
        pipe.response_callbacks = self._raw_callbacks
        return pipe

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, drain: bool = False) -> RunnerStats:
        """Process until `stop` is set, or with `drain` until the group has nothing unread or
        unacknowledged (entries other consumers hold are claimed once idle, then processed)."""
        log.info("consumer %s joined group %s on %s", self.consumer, self.group, self.keys.stream)
        backoff = Backoff()
        must_recover = True
        next_claim = 0.0
        outage_since: float | None = None
        drained = False
        upkeep_stop = threading.Event()
        upkeep = self._start_upkeep(upkeep_stop)
        while not stop.is_set():
            try:
                if must_recover:
                    # Re-reading the pending list brings back whatever was deferred or
                    # prepared and not written.
                    self._deferred.clear()
                    self._prepared = None
                    self._drop_sent()
                    self.ensure_group()
                    self.stats.recovered += self._recover_own_pending(stop)
                    must_recover = False
                if time.monotonic() >= next_claim:
                    # Entries the reads sent ahead delivered are this consumer's and under
                    # way: processed first, so that the claim does not take them back as idle
                    # (each claim counts as a delivery, towards max_deliveries).
                    self._process_sent()
                    self._write_prepared()
                    self._claim_idle(stop)
                    self._watch_lag()
                    self._forget_idle_consumers()
                    next_claim = time.monotonic() + self._claim_every_s
                if self._deferred:
                    self._retry_deferred(stop)
                    continue
                got = self._read_new()
                if outage_since is not None:
                    log.info("redis is back after %.1fs", time.monotonic() - outage_since)
                    outage_since = None
                backoff.reset()
                if got:
                    continue
                if drain and self._group_pending_count() == 0:
                    drained = True
                    break
                self._wait_for_new()
            except RedisUnavailable as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    self.stats.redis_outages += 1
                    metrics.REDIS_OUTAGES.labels(component=f"group:{self.group}").inc()
                    log.warning("redis unavailable (%s); retrying with backoff", exc)
                must_recover = True
                stop.wait(backoff.next_delay())
            except Abort as exc:
                log.warning("handler gave up (%s); stopping with its batch left pending", exc)
                self._prepared = None
                self._drop_sent()
                break
            except ScriptsFlushed:
                log.warning("Redis lost the scripts (SCRIPT FLUSH?); reloading them")
                must_recover = True
            except RedisCommandFailed as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("group %s is gone (stream deleted?); recreating it", self.group)
                must_recover = True
        try:
            # What the reads sent ahead delivered is processed, not left pending.
            self._process_sent()
            self._write_prepared()
        except _STOPPING as exc:
            log.warning("could not write the last prepared batch (%s); it stays pending", exc)
            self._drop_sent()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
        upkeep_stop.set()
        if upkeep is not None:
            upkeep.join()
        if drained and isinstance(self.handler, UpkeepingHandler):
            self.handler.drained()
        log.info(
            "consumer %s stopping: processed=%d dead_lettered=%d trimmed=%d claimed=%d",
            self.consumer,
            self.stats.processed,
            self.stats.dead_lettered,
            self.stats.trimmed,
            self.stats.claimed,
        )
        return self.stats

    def _start_upkeep(self, stop: threading.Event) -> threading.Thread | None:
        if not isinstance(self.handler, UpkeepingHandler):
            return None
        thread = threading.Thread(
            target=self.handler.upkeep, args=(stop,), name=f"{self.group}-upkeep", daemon=True
        )
        thread.start()
        return thread

    def ensure_group(self) -> bool:
        """Create the group unless it exists (True when it was created now). A group that
        exists gets its read counter back from its ledger when Redis lost it (see
        ensure_group.lua): after a restart from the append-only file it is wrong."""
        with redis_errors():
            reply = ENSURE_GROUP(
                self.client,
                [self.keys.stream, self.keys.ledger(self.group), self.keys.lost,
                 self.keys.dead_counts],
                [self.group, self.start_id],
            )  # fmt: skip
            TRIM_CHECK.load(self.client)
            CLAIM_IDLE.load(self.client)
        created = bool(reply[0])
        if created:
            log.info("created group %s on %s at %s", self.group, self.keys.stream, self.start_id)
            return True
        self._check_not_gone_back(str(reply[1]))
        if len(reply) == 4:
            had = "none" if int(reply[2]) < 0 else reply[2]
            log.warning(
                "group %s: Redis's read counter was %s, the ledger says %s entries were read "
                "(Redis restarted from its append-only file?); set it to the ledger's",
                self.group,
                had,
                reply[3],
            )
            metrics.GROUP_COUNTER_REPAIRS.labels(**self._labels).inc()
        return False

    def _check_not_gone_back(self, last_delivered: str) -> None:
        """Report a group that Redis says has read less than this runner saw it read: Redis
        came back from older data (a snapshot, or an append-only file that missed its last
        writes), and what was written after that copy is gone. Readings with `seq` show the
        loss sensor by sensor as sequence gaps."""
        if entry_order(last_delivered) >= entry_order(self._read_up_to):
            return
        log.error(
            "group %s: Redis says the group read up to %s, but it had read up to %s: Redis "
            "restarted from older data, and entries written after that copy are lost",
            self.group,
            last_delivered,
            self._read_up_to,
        )
        with redis_errors():
            self.client.hincrby(self.keys.ledger(self.group), "stream_went_back", 1)
        self._read_up_to = last_delivered

    # -- reading ----------------------------------------------------------------------------

    def _read_new(self, *, read_ahead: bool = True) -> int:
        """Read and process new entries; return how many were read.

        While a backlog waits (the last read came back full) `reads_per_batch` reads are sent
        at once and their entries make one batch, so the handler's cost per batch is shared by
        more entries. Reads join only when no other consumer read between them: a batch is
        always a run of the stream, as one larger read would give. The batch prepared last
        time is written as soon as Redis replies to the reads, and (with `read_ahead`, while
        the backlog waits and batches are quick) the next reads are sent before this batch is
        processed, so Redis runs its writes and the next reads while this thread parses,
        decodes and prepares.
        """
        began = time.monotonic()
        writing: tuple[D, Future[None]] | None = None

        def write_prepared_meanwhile() -> None:
            nonlocal writing
            writing = self._start_writing()

        try:
            sent, self._sent = self._sent, None
            reads = self._receive_reads(
                sent or self._send_reads(self._reads_next), write_prepared_meanwhile
            )
            # Each batch, the reads' entries it joins, with the hand-over count its first read
            # saw.
            batches: list[tuple[list[_ReadEntries], int]] = []
            for _, last_delivered, read, handovers in reads:
                if not len(read):
                    continue
                if batches and last_delivered == _last_id(batches[-1][0][-1]):
                    batches[-1][0].append(read)
                else:
                    batches.append(([read], handovers))
            full = len(reads[-1][2]) >= self.settings.read_batch
            self._reads_next = self.reads_per_batch if full else 1
            quick = self._batch_s < self.settings.claim_idle_ms / 1000 * READ_AHEAD_IDLE_SHARE
            if full and read_ahead and quick:
                self._sent = self._send_reads(self._reads_next)
            for pieces, handovers in batches:
                started, writing = writing, None
                self._process_fresh(pieces, started, handovers)
        finally:
            self._finish_writing(writing)
            self._batch_s = time.monotonic() - began
        return sum(len(piece) for pieces, _ in batches for piece in pieces)

    def _process_sent(self) -> None:
        """Process what the reads sent ahead delivered, sending none further."""
        if self._sent is not None:
            self._read_new(read_ahead=False)

    def _send_reads(self, count: int) -> _SentReads:
        """Send `count` XREADGROUPs of new entries at once, each in a MULTI that counts what
        trimming took first and reads the group's hand-over count."""
        read = (
            "XREADGROUP", "GROUP", self.group, self.consumer,
            "COUNT", self.settings.read_batch, "STREAMS", self.keys.stream, ">",
        )  # fmt: skip
        trim_check = TRIM_CHECK.command([self.keys.stream, self.keys.lost], [self.group])
        handovers = ("GET", self.keys.handovers(self.group))
        transaction = [("MULTI",), trim_check, handovers, read, ("EXEC",)]
        commands = transaction * count
        if self.decode_replies is not None:
            commands.append(("ECHO", self._reply_ending))
        pool = self.client.connection_pool
        with redis_errors():
            connection: Any = pool.get_connection()
            try:
                connection.send_packed_command(connection.pack_commands(commands))
            except BaseException:
                connection.disconnect()
                pool.release(connection)
                raise
        return _SentReads(connection, count)

    def _receive_reads(self, sent: _SentReads, on_replying: Callable[[], None]) -> list[_Read]:
        """The replies to reads sent with `_send_reads` (trimmed entries counted). Calls
        `on_replying` as Redis starts replying, before the replies are parsed."""
        connection = sent.connection
        with redis_errors():
            try:
                # Redis has run the reads once it replies: writes sent on another connection
                # before that could run first and hold the replies up.
                connection.can_read(timeout=connection.socket_timeout)
                on_replying()
                reads = self._parse_reads(connection, sent.count)
            except BaseException:
                connection.disconnect()
                raise
            finally:
                self.client.connection_pool.release(connection)
        for lost, *_ in reads:
            if lost:
                self._count_trimmed_unread(lost)
        self._last_delivered = reads[-1][1]
        newest = [read for _, _, read, _ in reads if len(read)]
        if newest:
            self._read_up_to = _last_id(newest[-1])
        return reads

    def _parse_reads(self, connection: Any, count: int) -> list[_Read]:
        """Each read's trimmed count, last-delivered ID, entries and hand-over count: parsed
        from the replies' bytes when the runner decodes them so, else (or when that parser
        gives up) by hiredis."""
        if self.decode_replies is None:
            return [self._parsed_transaction(connection.read_response) for _ in range(count)]
        data = read_until(connection, self._reply_ending_bytes)
        parsed = parse_reads(data, count, self.keys.stream)
        if parsed is not None:
            return [(r.lost, r.last_delivered, r.entries, r.handovers) for r in parsed]
        next_reply = hiredis_replies(connection, data)
        reads = [self._parsed_transaction(next_reply) for _ in range(count)]
        next_reply()
        return reads

    def _parsed_transaction(self, next_reply: Callable[[], Any]) -> _Read:
        (lost, last_delivered), handovers, reply = self._read_transaction(next_reply)
        return int(lost), str(last_delivered), _stream_entries(reply), int(handovers or 0)

    def _drop_sent(self) -> None:
        """Forget reads sent ahead: their entries stay pending here, to be re-read."""
        if self._sent is not None:
            self._sent.connection.disconnect()
            self.client.connection_pool.release(self._sent.connection)
            self._sent = None

    @staticmethod
    def _read_transaction(next_reply: Callable[[], Any]) -> list[Any]:
        """The results of one MULTI, trim check, GET and XREADGROUP, EXEC, each reply got by
        calling `next_reply`."""
        for _ in range(4):
            next_reply()
        results: list[Any] = next_reply()
        for result in results:
            if isinstance(result, redis.exceptions.NoScriptError):
                # Someone flushed the scripts. The read in the same MULTI still ran, so its
                # entries are pending here: recover them like after an outage.
                raise ScriptsFlushed from result
            if isinstance(result, redis.ResponseError):
                raise result
        return results

    def _count_trimmed_unread(self, lost: int) -> None:
        if lost < 0:
            log.error(
                "group %s skipped entries trimmed by MAXLEN; Redis lost the count", self.group
            )
            return
        self.stats.trimmed += lost
        metrics.GROUP_ENTRIES.labels(**self._labels, outcome="trimmed").inc(lost)
        log.error(
            "group %s lost %d entries to MAXLEN trimming before reading them", self.group, lost
        )

    def _forget_idle_consumers(self) -> None:
        with redis_errors():
            removed = FORGET_CONSUMERS(
                self.client, [self.keys.stream], [self.group, FORGET_IDLE_MS, self.consumer]
            )
        if removed:
            log.info("removed %d idle consumers holding nothing: %s", len(removed), removed)

    def _watch_lag(self) -> None:
        """Publish the group's lag and warn while trimming threatens entries it has not read."""
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.xinfo_groups(self.keys.stream)
            pipe.hget(self.keys.meta, "maxlen")
            groups, maxlen = pipe.execute()
        lag = next((g.get("lag") for g in groups if g["name"] == self.group), None)
        if lag is None:
            return
        metrics.GROUP_LAG.labels(**self._labels).set(lag)
        cap = int(maxlen) if maxlen else self.settings.maxlen
        warning = backlog_warning(lag, cap, self.settings.trim_warn_ratio)
        if warning:
            log.warning("group %s: %s", self.group, warning)

    def _wait_for_new(self) -> None:
        """Block until the stream has an entry after the group's position (or BLOCK expires).

        XREAD, not XREADGROUP, so that a read jumping over trimmed entries always goes through
        the counting MULTI in `_read_new`.
        """
        with redis_errors():
            self.client.xread(
                {self.keys.stream: self._last_delivered}, count=1, block=self.settings.block_ms
            )

    def _group_pending_count(self) -> int:
        with redis_errors():
            summary = self.client.xpending(self.keys.stream, self.group)
        return int(summary["pending"])

    def _recover_own_pending(self, stop: threading.Event) -> int:
        """Re-read and process what this consumer was delivered and never acknowledged.

        Counts a hand-over first: another process under the same consumer name may still hold
        these entries, and must check them one by one before it applies them."""
        self._count_handover()
        cursor, recovered = "0-0", 0
        while not stop.is_set():
            with redis_errors():
                pipe = self._pipeline(transaction=False)
                pipe.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.keys.stream: cursor},
                    count=self.settings.read_batch,
                )
                pipe.xpending_range(
                    self.keys.stream,
                    self.group,
                    f"({cursor}",
                    "+",
                    self.settings.read_batch,
                    consumername=self.consumer,
                )
                reply, pending = pipe.execute()
            entries = _stream_entries(reply)
            if not entries:
                break
            cursor = entries[-1][0]
            deliveries = {str(p["message_id"]): int(p["times_delivered"]) for p in pending}
            self._process_redelivered(entries, deliveries)
            recovered += len(entries)
        if recovered:
            log.info("consumer %s re-read %d of its own pending entries", self.consumer, recovered)
        return recovered

    def _claim_idle(self, stop: threading.Event) -> None:
        """Take over entries idle longer than claim_idle_ms, from any consumer (this one too).

        Each XAUTOCLAIM counts a hand-over in the same MULTI, so a consumer that read the
        entries cannot apply them without checking each (see `Batch.handovers`); it is sent only
        when some entry has been idle long enough."""
        if not self._any_idle():
            return
        cursor = "0-0"
        while not stop.is_set():
            with redis_errors():
                cursor, claimed, deleted = CLAIM_IDLE(
                    self.client,
                    [self.keys.stream, self.keys.handovers(self.group), self.keys.lost],
                    [self.group, self.consumer, self.settings.claim_idle_ms, cursor,
                     self.settings.read_batch],
                )  # fmt: skip
            if deleted:
                # Their data was trimmed; the script counted them as lost.
                self._note_trimmed(len(deleted))
            if claimed:
                self.stats.claimed += len(claimed)
                metrics.GROUP_CLAIMED.labels(**self._labels).inc(len(claimed))
                log.info("consumer %s claimed %d idle entries", self.consumer, len(claimed))
                ids = [entry_id for entry_id, _ in claimed]
                self._process_redelivered(claimed, self._deliveries_of(ids))
            if cursor == "0-0":
                return

    def _any_idle(self) -> bool:
        with redis_errors():
            return bool(
                self.client.xpending_range(
                    self.keys.stream, self.group, "-", "+", 1, idle=self.settings.claim_idle_ms
                )
            )

    def _count_handover(self) -> None:
        with redis_errors():
            self.client.incr(self.keys.handovers(self.group))

    def _deliveries_of(self, ids: Sequence[str]) -> dict[str, int]:
        """Delivery counts of the entries from ids[0] to ids[-1] that this consumer holds."""
        with redis_errors():
            pending = self.client.xpending_range(
                self.keys.stream,
                self.group,
                ids[0],
                ids[-1],
                len(ids),
                consumername=self.consumer,
            )
        return {str(p["message_id"]): int(p["times_delivered"]) for p in pending}

    # -- settling ---------------------------------------------------------------------------

    def _process_fresh(
        self,
        pieces: Sequence[_ReadEntries],
        writing: tuple[D, Future[None]] | None,
        handovers: int,
    ) -> None:
        """Settle entries delivered for the first time (one batch, in the pieces consecutive
        reads delivered): dead-letter or hand to the handler. A preparing handler's previous
        batch is written meanwhile (`writing`, when its write was started already)."""
        if self._preparer is None:
            self._settle_fresh(pieces, handovers, prepare=False)
            return
        writing = writing or self._start_writing()
        try:
            self._settle_fresh(pieces, handovers, prepare=True)
        finally:
            self._finish_writing(writing)

    def _settle_fresh(
        self, pieces: Sequence[_ReadEntries], handovers: int, *, prepare: bool
    ) -> None:
        """Decode the entries from their replies' bytes when that decoder takes them all;
        otherwise from strs, dead-lettering what `decode` refuses."""
        layouts = [piece for piece in pieces if isinstance(piece, EntryLayout)]
        if self.decode_replies is not None and len(layouts) == len(pieces):
            decoded = self.decode_replies(layouts)
            if decoded is not None:
                (self._prepare if prepare else self._handle)(decoded, handovers)
                return
        entries = [entry for piece in pieces for entry in _entries_of(piece)]
        deliveries = [1] * len(entries)
        self._decode_and_settle([], [], entries, deliveries, handovers=handovers, prepare=prepare)

    def _process_redelivered(self, entries: Sequence[RawEntry], deliveries: dict[str, int]) -> None:
        """Settle entries delivered before. `deliveries` maps the IDs this consumer still owns to
        their delivery counts; entries missing from it were taken by another consumer meanwhile
        and are left alone."""
        trimmed: list[str] = []
        dead: list[DeadEntry] = []
        to_decode: list[RawEntry] = []
        counts: list[int] = []
        max_deliveries = self.settings.max_deliveries
        for entry_id, fields in entries:
            count = deliveries.get(entry_id, 0)
            if count == 0:
                continue
            if not fields:
                trimmed.append(entry_id)
                continue
            if count > max_deliveries:
                reason = f"delivered {count} times, more than max_deliveries={max_deliveries}"
                last_error = self._failures.pop(entry_id)
                if last_error:
                    reason += f"; last error: {last_error}"
                dead.append((entry_id, reason, count, as_mapping(fields)))
                continue
            to_decode.append((entry_id, fields))
            counts.append(count)
        self._decode_and_settle(trimmed, dead, to_decode, counts)

    def _decode_and_settle(
        self,
        trimmed: list[str],
        dead: list[DeadEntry],
        entries: Sequence[RawEntry],
        deliveries: Sequence[int],
        *,
        handovers: int | None = None,
        prepare: bool = False,
    ) -> None:
        """Settle trimmed and dead entries, then decode the rest: what the decoder refuses is
        dead-lettered with its reason, the others go to the handler (with `prepare`, are
        prepared, to be written later)."""
        ids = [entry_id for entry_id, _ in entries]
        fields = [flat or () for _, flat in entries]
        valid, refused = self.decode(ids, fields)
        for position, reason in refused:
            dead.append((ids[position], reason, deliveries[position], as_mapping(fields[position])))
        if trimmed:
            self._settle_trimmed(trimmed)
        if dead:
            self._dead_letter(dead)
        if len(valid):
            (self._prepare if prepare else self._handle)(valid, handovers)

    def _settle_trimmed(self, ids: list[str]) -> None:
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.xack(self.keys.stream, self.group, *ids)
            pipe.hincrby(self.keys.lost, self.group, len(ids))
            pipe.execute()
        self._note_trimmed(len(ids))

    def _note_trimmed(self, count: int) -> None:
        self.stats.trimmed += count
        metrics.GROUP_ENTRIES.labels(**self._labels, outcome="trimmed").inc(count)
        log.error(
            "group %s: %d pending entries were trimmed by MAXLEN before processing",
            self.group,
            count,
        )

    def _dead_letter(self, dead: Sequence[DeadEntry]) -> None:
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            for entry_id, reason, count, fields in dead:
                record = dead_letter_record(
                    self.keys.stream, self.group, entry_id, self.consumer, count, reason, fields
                )
                queue_dead_letter(pipe, self.keys, self.settings.dead_letter_maxlen, record)
            pipe.xack(self.keys.stream, self.group, *[d[0] for d in dead])
            pipe.hincrby(self.keys.dead_counts, self.group, len(dead))
            pipe.execute()
        self.stats.dead_lettered += len(dead)
        metrics.GROUP_ENTRIES.labels(**self._labels, outcome="dead_lettered").inc(len(dead))
        first_id, first_reason = dead[0][0], dead[0][1]
        log.warning(
            "dead-lettered %d entries from group %s to %s (first: %s: %s)",
            len(dead),
            self.group,
            self.keys.dead,
            first_id,
            first_reason,
        )

    def _retry_deferred(self, stop: threading.Event) -> None:
        waiting = self._deferred
        self._deferred = []
        if self._deferred_rounds == 0:
            self._deferred_since = time.monotonic()
        elif time.monotonic() - self._deferred_since >= self.settings.claim_idle_ms / 3000:
            self._keep_claimed(waiting)
            self._deferred_since = time.monotonic()
        for entries in waiting:
            self._handle(entries)
        if self._deferred:
            # Short waits while older batches are being settled, longer while their consumer
            # may be dead and they wait to be claimed.
            self._deferred_rounds += 1
            stop.wait(min(DEFERRED_RETRY_S * 2**self._deferred_rounds, DEFERRED_RETRY_MAX_S))
        else:
            self._deferred_rounds = 0

    def _keep_claimed(self, batches: Sequence[D]) -> None:
        """Reset the idle time of deferred entries this consumer still holds, so that others do
        not claim a batch that is only waiting its turn: every claim counts as a delivery, and
        enough of them would dead-letter entries that never failed. XCLAIM with JUSTID counts
        none; an entry idle for less than a third of claim_idle_ms (claimed by another consumer
        since XPENDING answered) is left where it is."""
        for entries in batches:
            held = self._deliveries_of(entries.ids)
            if held:
                with redis_errors():
                    self.client.xclaim(
                        self.keys.stream,
                        self.group,
                        self.consumer,
                        self.settings.claim_idle_ms // 3,
                        [*held],
                        justid=True,
                    )

    # -- preparing and writing apart ---------------------------------------------------------

    def _prepare(self, entries: D, handovers: int | None) -> None:
        assert self._preparer is not None and self._prepared is None
        try:
            write = self._preparer.prepare(self._batch(entries, handovers))
        except _STOPPING:
            raise
        except Exception:
            # The plain path retries and isolates what fails.
            self._handle(entries)
            return
        self._prepared = (entries, write)

    def _start_writing(self) -> tuple[D, Future[None]] | None:
        """Start writing the prepared batch in the writer thread."""
        if self._prepared is None:
            return None
        entries, write = self._prepared
        self._prepared = None
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"{self.group}-writer")
        return entries, self._writer.submit(write)

    def _finish_writing(self, writing: tuple[D, Future[None]] | None) -> None:
        if writing is None:
            return
        entries, future = writing
        try:
            future.result()
        except _STOPPING:
            raise
        except Exception as exc:
            self._count_handler_error()
            log.warning("writing a prepared batch failed (%s); handling it again", exc)
            self._handle(entries)
            return
        self._count_processed(entries)

    def _write_prepared(self) -> None:
        self._finish_writing(self._start_writing())

    def _handle(self, entries: D, handovers: int | None = None) -> None:
        failed = self._handle_isolating(entries, handovers)
        if failed:
            first_id, first_error = failed[0]
            log.warning(
                "handler failed on %d of %d entries, left pending for retry (first: %s: %s)",
                len(failed),
                len(entries),
                first_id,
                first_error,
            )

    def _handle_isolating(self, entries: D, handovers: int | None) -> list[tuple[str, str]]:
        """Run the handler; on failure split the batch so the entries that work go through
        (the halves without their hand-over count: the handler checks each of their entries).

        Returns the entries that failed on their own, with the error; they stay pending.
        """
        batch = self._batch(entries, handovers)
        try:
            self.handler(batch)
        except Deferred:
            self._deferred.append(entries)
            return []
        except _STOPPING:
            raise
        except Exception as exc:
            self._count_handler_error()
            if len(entries) > 1:
                middle = len(entries) // 2
                return self._handle_isolating(entries[:middle], None) + self._handle_isolating(
                    entries[middle:], None
                )
            error = f"{type(exc).__name__}: {exc}"
            entry_id = entries.ids[0]
            self._failures.record(entry_id, error)
            return [(entry_id, error)]
        if not self.handler.acknowledges:
            with redis_errors():
                self.client.xack(self.keys.stream, self.group, *batch.ids)
        self._count_processed(entries)
        return []

    def _batch(self, entries: D, handovers: int | None) -> Batch[D]:
        return Batch(self.keys.stream, self.group, self.consumer, entries, handovers)

    def _count_processed(self, entries: D) -> None:
        self.stats.processed += len(entries)
        metrics.GROUP_ENTRIES.labels(**self._labels, outcome="processed").inc(len(entries))

    def _count_handler_error(self) -> None:
        self.stats.handler_errors += 1
        metrics.GROUP_HANDLER_ERRORS.labels(**self._labels).inc()
