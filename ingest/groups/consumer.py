"""One consumer of one group, as Redis sees it: the group's creation and repair, reads of new
entries (`GroupReads`), re-reads of its own pending entries, claims of others' idle ones,
acknowledgements, dead letters and the group's upkeep. It decides nothing about entries: the
runner does."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from ingest import metrics
from ingest.contract.reading import entry_order
from ingest.deadletter import dead_letter_record, queue_dead_letter
from ingest.groups.batch import DeadEntry
from ingest.keys import StreamKeys
from ingest.redis.errors import redis_errors
from ingest.redis.groupreads import GroupReads, stream_entries
from ingest.redis.replies import RawEntry
from ingest.redis.scripts import LuaScript

log = logging.getLogger("ingest.groups")

ENSURE_GROUP = LuaScript("ingest", "ensure_group.lua", library="group_info.lua")
CLAIM_IDLE = LuaScript("ingest", "claim_idle.lua")
FORGET_CONSUMERS = LuaScript("ingest", "forget_consumers.lua")
# A consumer that holds nothing and was idle this long is removed from its group.
FORGET_IDLE_MS = 3_600_000


@dataclass(frozen=True)
class Claimed:
    """One XAUTOCLAIM step: where to go on from, the entries taken with their delivery counts,
    and how many pending entries had been trimmed away (counted as lost)."""

    cursor: str
    entries: list[RawEntry]
    deliveries: dict[str, int]
    trimmed: int


@dataclass(frozen=True)
class EnsuredGroup:
    """Whether the group was created now, and how far Redis says it has read."""

    created: bool
    last_delivered: str


@dataclass(frozen=True)
class Lag:
    """The group's unread entries and the stream's cap as its writers recorded it."""

    lag: int
    maxlen: int | None


class GroupConsumer:
    def __init__(
        self,
        client: redis.Redis,
        keys: StreamKeys,
        group: str,
        consumer: str,
        *,
        start_id: str,
        read_batch: int,
        claim_idle_ms: int,
        dead_letter_maxlen: int,
        from_bytes: bool,
    ) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.name = consumer
        self.start_id = start_id
        self.read_batch = read_batch
        self.claim_idle_ms = claim_idle_ms
        self.dead_letter_maxlen = dead_letter_maxlen
        self.reads = GroupReads(client, keys, group, consumer, read_batch, from_bytes=from_bytes)
        self._labels = {"stream": keys.stream, "group": group}

    def ensure_group(self, read_up_to: str) -> EnsuredGroup:
        """Create the group unless it exists. A group that exists gets its read counter back
        from its ledger when Redis lost it (see ensure_group.lua: after a restart from the
        append-only file it is wrong), and is reported when Redis says it read less than
        `read_up_to`, the newest entry this consumer read."""
        with redis_errors():
            reply = ENSURE_GROUP(
                self.client,
                [self.keys.stream, self.keys.ledger(self.group), self.keys.lost,
                 self.keys.dead_counts],
                [self.group, self.start_id],
            )  # fmt: skip
            CLAIM_IDLE.load(self.client)
        self.reads.load_scripts()
        if reply[0]:
            log.info("created group %s on %s at %s", self.group, self.keys.stream, self.start_id)
            return EnsuredGroup(created=True, last_delivered="0-0")
        last_delivered = str(reply[1])
        self._check_not_gone_back(last_delivered, read_up_to)
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
        return EnsuredGroup(created=False, last_delivered=last_delivered)

    def _check_not_gone_back(self, last_delivered: str, read_up_to: str) -> None:
        """Report a group that Redis says has read less than this consumer saw it read: Redis
        came back from older data (a snapshot, or an append-only file that missed its last
        writes), and what was written after that copy is gone. Readings with `seq` show the
        loss sensor by sensor as sequence gaps."""
        if entry_order(last_delivered) >= entry_order(read_up_to):
            return
        log.error(
            "group %s: Redis says the group read up to %s, but it had read up to %s: Redis "
            "restarted from older data, and entries written after that copy are lost",
            self.group,
            last_delivered,
            read_up_to,
        )
        with redis_errors():
            self.client.hincrby(self.keys.ledger(self.group), "stream_went_back", 1)

    def pending_page(self, after: str) -> tuple[list[RawEntry], dict[str, int]]:
        """Up to read_batch of this consumer's own pending entries after `after`, with the
        delivery counts of those it still holds."""
        with redis_errors():
            pipe = self.reads.pipeline(transaction=False)
            pipe.xreadgroup(self.group, self.name, {self.keys.stream: after},
                            count=self.read_batch)  # fmt: skip
            pipe.xpending_range(self.keys.stream, self.group, f"({after}", "+", self.read_batch,
                                consumername=self.name)  # fmt: skip
            reply, pending = pipe.execute()
        deliveries = {str(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return stream_entries(reply), deliveries

    def claim_idle(self, cursor: str) -> Claimed:
        """One XAUTOCLAIM step over entries idle longer than claim_idle_ms, from any consumer
        (this one too). Each step counts a hand-over in the same script, so a consumer that read
        the entries cannot apply them without checking each (see `Batch.handovers`); trimmed
        entries are counted as lost there too."""
        with redis_errors():
            cursor, claimed, deleted = CLAIM_IDLE(
                self.client,
                [self.keys.stream, self.keys.handovers(self.group), self.keys.lost],
                [self.group, self.name, self.claim_idle_ms, cursor, self.read_batch],
            )
        entries = [(str(entry_id), fields) for entry_id, fields in claimed]
        ids = [entry_id for entry_id, _ in entries]
        deliveries = self.deliveries_of(ids) if ids else {}
        return Claimed(str(cursor), entries, deliveries, len(deleted))

    def any_idle(self) -> bool:
        with redis_errors():
            return bool(
                self.client.xpending_range(
                    self.keys.stream, self.group, "-", "+", 1, idle=self.claim_idle_ms
                )
            )

    def count_handover(self) -> None:
        with redis_errors():
            self.client.incr(self.keys.handovers(self.group))

    def deliveries_of(self, ids: Sequence[str]) -> dict[str, int]:
        """Delivery counts of the entries from ids[0] to ids[-1] that this consumer holds."""
        with redis_errors():
            pending = self.client.xpending_range(
                self.keys.stream, self.group, ids[0], ids[-1], len(ids), consumername=self.name
            )
        return {str(p["message_id"]): int(p["times_delivered"]) for p in pending}

    def keep_claimed(self, ids: Sequence[str]) -> None:
        """Reset the idle time of these entries where this consumer still holds them, so that
        others do not claim them. XCLAIM with JUSTID counts no delivery; an entry idle for less
        than a third of claim_idle_ms (claimed by another consumer since XPENDING answered) is
        left where it is."""
        held = self.deliveries_of(ids)
        if held:
            with redis_errors():
                self.client.xclaim(self.keys.stream, self.group, self.name,
                                   self.claim_idle_ms // 3, [*held], justid=True)  # fmt: skip

    def ack(self, ids: Sequence[str]) -> None:
        with redis_errors():
            self.client.xack(self.keys.stream, self.group, *ids)

    def settle_trimmed(self, ids: Sequence[str]) -> None:
        """Acknowledge pending entries whose data was trimmed, counting them as lost."""
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.xack(self.keys.stream, self.group, *ids)
            pipe.hincrby(self.keys.lost, self.group, len(ids))
            pipe.execute()

    def dead_letter(self, dead: Sequence[DeadEntry]) -> None:
        """Copy the entries to the dead-letter stream with their reasons and acknowledge them,
        in one transaction."""
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            for entry in dead:
                record = dead_letter_record(
                    self.keys.stream, self.group, entry.entry_id, self.name, entry.deliveries,
                    entry.reason, entry.fields,
                )  # fmt: skip
                queue_dead_letter(pipe, self.keys, self.dead_letter_maxlen, record)
            pipe.xack(self.keys.stream, self.group, *[entry.entry_id for entry in dead])
            pipe.hincrby(self.keys.dead_counts, self.group, len(dead))
            pipe.execute()

    def forget_idle_consumers(self) -> list[str]:
        """Remove the group's consumers that hold nothing and were idle an hour."""
        with redis_errors():
            removed: list[str] = FORGET_CONSUMERS(
                self.client, [self.keys.stream], [self.group, FORGET_IDLE_MS, self.name]
            )
        return removed

    def lag(self) -> Lag | None:
        """The group's lag (None when Redis does not know it) and the recorded MAXLEN."""
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.xinfo_groups(self.keys.stream)
            pipe.hget(self.keys.meta, "maxlen")
            groups, maxlen = pipe.execute()
        lag = next((g.get("lag") for g in groups if g["name"] == self.group), None)
        if lag is None:
            return None
        return Lag(int(lag), int(maxlen) if maxlen else None)

    def wait_for_new(self, after: str, block_ms: int) -> None:
        """Block until the stream has an entry after `after` (or BLOCK expires).

        XREAD, not XREADGROUP, so that a read jumping over trimmed entries always goes through
        the counting MULTI of `GroupReads`."""
        with redis_errors():
            self.client.xread({self.keys.stream: after}, count=1, block=block_ms)

    def group_pending(self) -> int:
        with redis_errors():
            summary = self.client.xpending(self.keys.stream, self.group)
        return int(summary["pending"])
