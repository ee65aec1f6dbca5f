"""The group runner: everything between a stream and a batch handler, losing nothing.

It stays one class of over 400 lines because the loop, the batching and the settling share the
state of the work in hand (reads sent ahead, a batch prepared and not written, batches
deferred), and the ordering rules below are checked most easily in one place. Its Redis work is
in `consumer`, the reads' fast path in `ingest.redis.groupreads`, write-behind in
`writebehind`, and its metrics and log lines in `observer`.

One runner is one consumer in one group (`GroupConsumer` does its Redis work). It

- creates the group (MKSTREAM; an existing group is fine; recreated if the stream was deleted),
- first re-reads its own pending entries (left by an earlier run under the same name),
- reads new entries in batches, each read in one MULTI with a check that counts entries MAXLEN
  trimmed before the group reached them (while a backlog waits, consecutive full reads can make
  one batch, and the next reads are sent before a batch is processed),
- claims entries other consumers left idle, counting each claim as a hand-over, so a handler can
  tell a batch read as new is still all its own (see `Batch.handovers`),
- decodes a batch at once (see `entries`; new entries straight from the bytes of the reads'
  replies when it has a decoder for them, see `ingest.redis.replies`), and dead-letters the
  entries its decoder refuses and entries delivered more than `max_deliveries` times, each in
  one transaction with its XACK,
- hands the handler whole batches and acknowledges only after the handler returns (or lets the
  handler acknowledge atomically with its own writes); a handler that prepares a batch apart
  from writing it has its writes run while the next batch is decoded and prepared,
- isolates an entry that makes the handler fail by splitting the batch, so the rest flows,
- backs off and recovers when Redis goes away, and stops between batches when asked.

Ordering rules that keep it correct:
- Before it claims, a runner processes what its reads sent ahead delivered: those entries are
  its own and under way, and a claim would take them back as idle (each claim counts a
  delivery, towards max_deliveries).
- Reads are sent ahead only while a batch takes under a tenth of claim_idle_ms, for the same
  reason; deferred batches are kept claimed while they wait their turn.
- After an outage or a flush of the scripts, whatever was deferred, prepared or sent ahead is
  dropped: re-reading the consumer's pending list brings it back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic

import redis

from ingest.backoff import Backoff
from ingest.contract.entries import Admission, BatchDecoder, D, ReplyDecoder, as_mapping
from ingest.contract.reading import entry_order
from ingest.errors import RedisCommandFailed, RedisUnavailable
from ingest.groups.batch import (
    Abort,
    Batch,
    BatchHandler,
    DeadEntry,
    Deferred,
    PreparingHandler,
    RunnerStats,
    UpkeepingHandler,
)
from ingest.groups.consumer import GroupConsumer
from ingest.groups.observer import RunnerObserver
from ingest.groups.writebehind import WriteBehind, Writing
from ingest.keys import StreamKeys
from ingest.redis.groupreads import Read, ScriptsFlushed, SentReads
from ingest.redis.replies import EntryLayout, RawEntry
from ingest.settings import Settings

log = logging.getLogger("ingest.groups")

# Reads are sent ahead only while a batch takes less than this share of claim_idle_ms: what they
# deliver waits for the batch in hand, and must not look idle enough for others to claim.
READ_AHEAD_IDLE_SHARE = 0.1
# How long a runner with deferred batches waits before offering them again.
DEFERRED_RETRY_S = 0.001
DEFERRED_RETRY_MAX_S = 0.1

# Errors that end a batch's handling and reach the run loop instead of counting as a failure.
_STOPPING = (Abort, RedisUnavailable, redis.ConnectionError, redis.TimeoutError)


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
class _FreshBatch:
    """Consecutive reads' replies that make one batch, with the hand-over count the first saw."""

    reads: list[Read]
    handovers: int


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
        admit: Admission[D] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = StreamKeys(stream or settings.stream)
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.decode = decode
        # Decodes new entries from the bytes of the reads' replies; `decode` takes what it
        # gives up on.
        self.decode_replies = decode_replies
        # The group's limits on what it takes in; what they keep out is dead-lettered.
        self.admit = admit
        self.redis = GroupConsumer(
            client, self.keys, group, consumer, start_id=start_id,
            read_batch=settings.read_batch, claim_idle_ms=settings.claim_idle_ms,
            dead_letter_maxlen=settings.dead_letter_maxlen, from_bytes=decode_replies is not None,
        )  # fmt: skip
        self.reads_per_batch = reads_per_batch
        self.observe = RunnerObserver(self.keys.stream, self.keys.dead, group, consumer)
        self.stats = self.observe.stats
        self._failures = _Failures()
        # The group's last-delivered ID before the last read (new entries come after it), and
        # the newest entry this runner read as new: a group Redis says has read less lost it.
        self._last_delivered = "0-0"
        self._read_up_to = "0-0"
        # Reads to send at once next time: more while a backlog waits.
        self._reads_next = 1
        # While a backlog waits, the next reads are sent before this batch is processed, so
        # Redis runs them meanwhile.
        self._sent: SentReads | None = None
        # How long the last batch read took to read and process.
        self._batch_s = 0.0
        self._claim_every_s = min(settings.claim_idle_ms / 2000, 5.0)
        # Batches the handler deferred, oldest first; offered again before anything new is read.
        self._deferred: list[D] = []
        self._deferred_rounds = 0
        self._deferred_since = 0.0
        # The handler when it prepares apart from writing, and its writes under way.
        self._preparer: PreparingHandler[D] | None = (
            handler if isinstance(handler, PreparingHandler) else None
        )
        self._behind: WriteBehind[D] = WriteBehind(group)

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, drain: bool = False) -> RunnerStats:
        """Process until `stop` is set, or with `drain` until the group has nothing unread or
        unacknowledged (entries other consumers hold are claimed once idle, then processed)."""
        self.observe.joined()
        backoff = Backoff()
        must_recover = True
        next_claim = 0.0
        drained = False
        upkeep_stop = threading.Event()
        upkeep = self._start_upkeep(upkeep_stop)
        while not stop.is_set():
            try:
                if must_recover:
                    # Re-reading the pending list brings back whatever was deferred or
                    # prepared and not written.
                    self._deferred.clear()
                    self._behind.drop()
                    self._drop_sent()
                    self.ensure_group()
                    self.observe.recovered(self._recover_own_pending(stop))
                    must_recover = False
                if time.monotonic() >= next_claim:
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
                self.observe.redis_available()
                backoff.reset()
                if got:
                    continue
                if drain and self.redis.group_pending() == 0:
                    drained = True
                    break
                self.redis.wait_for_new(self._last_delivered, self.settings.block_ms)
            except RedisUnavailable as exc:
                self.observe.redis_unavailable(exc)
                must_recover = True
                stop.wait(backoff.next_delay())
            except Abort as exc:
                log.warning("handler gave up (%s); stopping with its batch left pending", exc)
                self._behind.drop()
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
        self._finish(upkeep, upkeep_stop, drained=drained)
        return self.stats

    def _finish(
        self, upkeep: threading.Thread | None, upkeep_stop: threading.Event, *, drained: bool
    ) -> None:
        try:
            # What the reads sent ahead delivered is processed, not left pending.
            self._process_sent()
            self._write_prepared()
        except _STOPPING as exc:
            log.warning("could not write the last prepared batch (%s); it stays pending", exc)
            self._drop_sent()
        self._behind.shutdown()
        upkeep_stop.set()
        if upkeep is not None:
            upkeep.join()
        if drained and isinstance(self.handler, UpkeepingHandler):
            self.handler.drained()
        self.observe.stopping()

    def _start_upkeep(self, stop: threading.Event) -> threading.Thread | None:
        if not isinstance(self.handler, UpkeepingHandler):
            return None
        thread = threading.Thread(
            target=self.handler.upkeep, args=(stop,), name=f"{self.group}-upkeep", daemon=True
        )
        thread.start()
        return thread

    def ensure_group(self) -> bool:
        """Create the group unless it exists; True when it was created now."""
        ensured = self.redis.ensure_group(self._read_up_to)
        if entry_order(ensured.last_delivered) < entry_order(self._read_up_to):
            # Redis came back from older data (reported): its position is the one to go by.
            self._read_up_to = ensured.last_delivered
        return ensured.created

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
        writing: Writing[D] | None = None

        def write_prepared_meanwhile() -> None:
            nonlocal writing
            writing = self._behind.start()

        batches: list[_FreshBatch] = []
        try:
            sent, self._sent = self._sent, None
            reads = self._receive(sent or self.redis.reads.send(self._reads_next),
                                  write_prepared_meanwhile)  # fmt: skip
            for read in reads:
                if not len(read):
                    continue
                if batches and read.last_delivered == batches[-1].reads[-1].last_id():
                    batches[-1].reads.append(read)
                else:
                    batches.append(_FreshBatch([read], read.handovers))
            full = len(reads[-1]) >= self.settings.read_batch
            self._reads_next = self.reads_per_batch if full else 1
            quick = self._batch_s < self.settings.claim_idle_ms / 1000 * READ_AHEAD_IDLE_SHARE
            if full and read_ahead and quick:
                self._sent = self.redis.reads.send(self._reads_next)
            for batch in batches:
                started, writing = writing, None
                self._process_fresh(batch, started)
        finally:
            self._finish_writing(writing)
            self._batch_s = time.monotonic() - began
        return sum(len(read) for batch in batches for read in batch.reads)

    def _receive(self, sent: SentReads, on_replying: Callable[[], None]) -> list[Read]:
        reads = self.redis.reads.receive(sent, on_replying)
        for read in reads:
            if read.lost:
                self.observe.trimmed_unread(read.lost)
        self._last_delivered = reads[-1].last_delivered
        newest = [read for read in reads if len(read)]
        if newest:
            self._read_up_to = newest[-1].last_id()
        return reads

    def _process_sent(self) -> None:
        """Process what the reads sent ahead delivered, sending none further."""
        if self._sent is not None:
            self._read_new(read_ahead=False)

    def _drop_sent(self) -> None:
        """Forget reads sent ahead: their entries stay pending here, to be re-read."""
        if self._sent is not None:
            self.redis.reads.drop(self._sent)
            self._sent = None

    # -- the group's upkeep ---------------------------------------------------------------------

    def _forget_idle_consumers(self) -> None:
        self.observe.consumers_removed(self.redis.forget_idle_consumers())

    def _watch_lag(self) -> None:
        """Publish the group's lag and warn while trimming threatens entries it has not read."""
        found = self.redis.lag()
        if found is not None:
            cap = found.maxlen or self.settings.maxlen
            self.observe.lag(found.lag, cap, self.settings.trim_warn_ratio)

    def _recover_own_pending(self, stop: threading.Event) -> int:
        """Re-read and process what this consumer was delivered and never acknowledged.

        Counts a hand-over first: another process under the same consumer name may still hold
        these entries, and must check them one by one before it applies them."""
        self.redis.count_handover()
        cursor, recovered = "0-0", 0
        while not stop.is_set():
            entries, deliveries = self.redis.pending_page(cursor)
            if not entries:
                break
            cursor = entries[-1][0]
            self._process_redelivered(entries, deliveries)
            recovered += len(entries)
        return recovered

    def _claim_idle(self, stop: threading.Event) -> None:
        """Take over entries idle longer than claim_idle_ms, from any consumer (this one too);
        claims are sent only when some entry has been idle long enough."""
        if not self.redis.any_idle():
            return
        cursor = "0-0"
        while not stop.is_set():
            claimed = self.redis.claim_idle(cursor)
            cursor = claimed.cursor
            if claimed.trimmed:
                # Their data was trimmed; the claim counted them as lost.
                self.observe.trimmed_pending(claimed.trimmed)
            if claimed.entries:
                self.observe.claimed(len(claimed.entries))
                self._process_redelivered(claimed.entries, claimed.deliveries)
            if cursor == "0-0":
                return

    # -- settling ---------------------------------------------------------------------------

    def _process_fresh(self, batch: _FreshBatch, writing: Writing[D] | None) -> None:
        """Settle entries delivered for the first time (one batch, in the replies of consecutive
        reads): dead-letter or hand to the handler. A preparing handler's previous batch is
        written meanwhile (`writing`, when its write was started already)."""
        if self._preparer is None:
            self._settle_fresh(batch, prepare=False)
            return
        writing = writing or self._behind.start()
        try:
            self._settle_fresh(batch, prepare=True)
        finally:
            self._finish_writing(writing)

    def _settle_fresh(self, batch: _FreshBatch, *, prepare: bool) -> None:
        """Decode the entries from their replies' bytes when that decoder takes them all;
        otherwise from strs, dead-lettering what `decode` refuses."""
        layouts = [read.entries for read in batch.reads if isinstance(read.entries, EntryLayout)]
        if self.decode_replies is not None and len(layouts) == len(batch.reads):
            decoded = self.decode_replies(layouts)
            if decoded is not None:
                self._take(decoded, {}, batch.handovers, prepare=prepare)
                return
        entries = [entry for read in batch.reads for entry in read.raw_entries()]
        deliveries = [1] * len(entries)
        self._decode_and_settle([], [], entries, deliveries, handovers=batch.handovers,
                                prepare=prepare)  # fmt: skip

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
                dead.append(DeadEntry(entry_id, reason, count, as_mapping(fields)))
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
            dead.append(DeadEntry(ids[position], reason, deliveries[position],
                                  as_mapping(fields[position])))  # fmt: skip
        if trimmed:
            self.redis.settle_trimmed(trimmed)
            self.observe.trimmed_pending(len(trimmed))
        if dead:
            self.redis.dead_letter(dead)
            self.observe.dead_lettered(dead)
        if len(valid):
            counts = dict(zip(ids, deliveries, strict=True))
            self._take(valid, counts, handovers, prepare=prepare)

    def _take(
        self, entries: D, deliveries: dict[str, int], handovers: int | None, *, prepare: bool
    ) -> None:
        """Hand decoded entries to the handler (with `prepare`, prepare them), after
        dead-lettering what the group's limits keep out. `deliveries` gives the delivery
        counts of entries delivered more than once."""
        if self.admit is not None:
            ids = entries.ids
            entries, kept_out = self.admit(entries)
            if kept_out:
                dead = [
                    DeadEntry(
                        ids[out.position],
                        out.reason,
                        deliveries.get(ids[out.position], 1),
                        out.fields,
                    )
                    for out in kept_out
                ]
                self.redis.dead_letter(dead)
                self.observe.dead_lettered(dead)
        if len(entries):
            (self._prepare if prepare else self._handle)(entries, handovers)

    def _retry_deferred(self, stop: threading.Event) -> None:
        waiting = self._deferred
        self._deferred = []
        if self._deferred_rounds == 0:
            self._deferred_since = time.monotonic()
        elif time.monotonic() - self._deferred_since >= self.settings.claim_idle_ms / 3000:
            # A batch only waiting its turn must not be claimed: every claim counts as a
            # delivery, and enough of them would dead-letter entries that never failed.
            for entries in waiting:
                self.redis.keep_claimed(entries.ids)
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

    # -- preparing and writing apart ---------------------------------------------------------

    def _prepare(self, entries: D, handovers: int | None) -> None:
        assert self._preparer is not None
        try:
            write = self._preparer.prepare(self._batch(entries, handovers))
        except _STOPPING:
            raise
        except Exception:
            # The plain path retries and isolates what fails.
            self._handle(entries)
            return
        self._behind.hold(entries, write)

    def _finish_writing(self, writing: Writing[D] | None) -> None:
        if writing is None:
            return
        try:
            writing.future.result()
        except _STOPPING:
            raise
        except Exception as exc:
            self.observe.handler_error()
            log.warning("writing a prepared batch failed (%s); handling it again", exc)
            self._handle(writing.entries)
            return
        self.observe.processed(len(writing.entries), writing.entries.ids[0])

    def _write_prepared(self) -> None:
        self._finish_writing(self._behind.start())

    # -- handling ---------------------------------------------------------------------------

    def _handle(self, entries: D, handovers: int | None = None) -> None:
        failed = self._handle_isolating(entries, handovers)
        if failed:
            self.observe.handler_failed(failed, len(entries))

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
            self.observe.handler_error()
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
            self.redis.ack(batch.ids)
        self.observe.processed(len(entries), entries.ids[0])
        return []

    def _batch(self, entries: D, handovers: int | None) -> Batch[D]:
        return Batch(self.keys.stream, self.group, self.consumer, entries, handovers)
