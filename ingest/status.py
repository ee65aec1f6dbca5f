"""What `telemetry status` reports about a stream and its groups, gathered with walrus.

Gathering (I/O) and judging (pure: `trim_warnings`) are separate so the judgement can be tested
on its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import walrus

from ingest.backlog import backlog_warning
from ingest.contract.reading import entry_order
from ingest.keys import SETTLED, StreamKeys
from ingest.redis.connection import as_text, connect
from ingest.redis.errors import redis_errors
from ingest.settings import Settings

PENDING_SCAN_LIMIT = 10_000
# Aggregators roll the finest tier up within seconds of each bucket's end.
ROLLUP_WARN_S = 300


@dataclass(frozen=True)
class ConsumerStatus:
    name: str
    pending: int
    idle_ms: int


@dataclass
class GroupStatus:
    name: str
    consumers: list[ConsumerStatus]
    pending: int
    oldest_pending_id: str | None
    oldest_pending_idle_ms: int | None
    max_delivery_count: int | None
    pending_scanned: int
    last_delivered_id: str
    entries_read: int | None
    lag: int | None
    lost_to_trimming: int
    dead_lettered: int
    # What the group's handler recorded: `settled` outcomes (each entry in exactly one) and
    # other facts (sequence gaps, ...).
    settled: dict[str, int] = field(default_factory=dict)
    facts: dict[str, int] = field(default_factory=dict)
    # Entries the stream took since the group started that the ledger cannot place; 0 when
    # nothing was lost. None for groups whose handler keeps no ledger.
    unaccounted: int | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class StreamStatus:
    stream: str
    exists: bool
    length: int
    maxlen: int
    maxlen_source: str
    first_id: str | None
    last_id: str | None
    entries_added: int
    dead_letters: int
    groups: list[GroupStatus]
    # Where the coarse tiers' roll-up of the finest tier stands: fine buckets starting before
    # this time are in them (None before anything was aggregated).
    rolled_up_to_ms: int | None = None
    # Sensors in the device registry, and fields inputs dropped from readings they wrote
    # (lenient decoding; per sensor: `telemetry devices list`).
    devices: int = 0
    dropped_fields: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ShardedStatus:
    """Each shard's status and their totals (`shard_totals`)."""

    shards: list[StreamStatus]
    total: dict[str, Any]


def trim_warnings(group: GroupStatus, maxlen: int, first_id: str | None, ratio: float) -> list[str]:
    """Why this group is losing, or about to lose, entries to MAXLEN trimming."""
    warnings = []
    if group.lost_to_trimming:
        warnings.append(
            f"{group.lost_to_trimming} entries were trimmed before this group processed them"
        )
    if group.lag is None:
        warnings.append("lag unknown (entries deleted with XDEL); cannot judge trimming risk")
    elif backlog := backlog_warning(group.lag, maxlen, ratio):
        warnings.append(backlog)
    if (
        group.oldest_pending_id is not None
        and first_id is not None
        and entry_order(group.oldest_pending_id) < entry_order(first_id)
    ):
        warnings.append(
            "pending entries older than the stream's first entry: their data is already trimmed"
        )
    return warnings


def status_database(settings: Settings) -> walrus.Database:
    """The client status is gathered with (on a cluster, from the node serving the stream); a
    service that reports often keeps one."""
    return walrus.Database(connection_pool=connect(settings, socket_timeout_s=10).connection_pool)


def stream_status(
    source: Settings | walrus.Database, stream: str, default_maxlen: int, warn_ratio: float
) -> StreamStatus:
    """The stream's and its groups' status, from the Redis settings name or through a kept
    client."""
    keys = StreamKeys(stream)
    db = status_database(source) if isinstance(source, Settings) else source
    with redis_errors():
        names = [as_text(g["name"]) for g in db.xinfo_groups(stream)] if db.exists(stream) else []
        # Everything a ledger is balanced against, read at one instant: read apart, a worker
        # settling a batch in between makes a healthy group look unbalanced.
        pipe = db.pipeline(transaction=True)
        pipe.hget(keys.meta, "maxlen")
        pipe.xlen(keys.dead)
        pipe.hgetall(keys.lost)
        pipe.hgetall(keys.dead_counts)
        pipe.hget(keys.rollup_mark, "bucket")
        pipe.hlen(keys.devices)
        pipe.hget(keys.meta, "dropped_fields")
        pipe.exists(stream)
        pipe.xinfo_stream(stream)
        pipe.xinfo_groups(stream)
        for name in names:
            pipe.hgetall(keys.ledger(name))
        (
            recorded_maxlen,
            dead_letters,
            lost,
            dead_counts,
            mark,
            devices,
            dropped_fields,
            exists,
            info,
            groups_info,
            *ledgers,
        ) = pipe.execute(raise_on_error=False)
        maxlen, source = (
            (int(recorded_maxlen), "written by the stream's writers")
            if recorded_maxlen
            else (default_maxlen, "from settings; no writer has recorded one yet")
        )
        dropped = int(dropped_fields or 0)
        if not exists:
            return StreamStatus(stream, False, 0, maxlen, source, None, None, 0, dead_letters, [],
                                devices=devices, dropped_fields=dropped)  # fmt: skip
        for reply in (info, groups_info, *ledgers):
            if isinstance(reply, Exception):
                raise reply
        counts = (
            {as_text(k): int(v) for k, v in lost.items()},
            {as_text(k): int(v) for k, v in dead_counts.items()},
        )
        by_name = dict(zip(names, ledgers, strict=True))
        handle = db.Stream(stream)
        first_id = as_text(info["first-entry"][0]) if info.get("first-entry") else None
        last_id = as_text(info["last-entry"][0]) if info.get("last-entry") else None
        added = int(info.get("entries-added", 0))
        groups = [
            _group_status(
                db,
                handle,
                raw,
                by_name.get(as_text(raw["name"]), {}),
                counts,
                added,
                maxlen,
                first_id,
                warn_ratio,
            )
            for raw in groups_info
        ]
    return StreamStatus(
        stream=stream,
        exists=True,
        length=int(info["length"]),
        maxlen=maxlen,
        maxlen_source=source,
        first_id=first_id,
        last_id=last_id,
        entries_added=int(info.get("entries-added", 0)),
        dead_letters=dead_letters,
        groups=groups,
        rolled_up_to_ms=None if mark is None else int(mark),
        devices=devices,
        dropped_fields=dropped,
    )


def _group_status(
    db: walrus.Database,
    handle: Any,
    raw: dict[str, Any],
    stored_ledger: dict[Any, Any],
    counts: tuple[dict[str, int], dict[str, int]],
    entries_added: int,
    maxlen: int,
    first_id: str | None,
    warn_ratio: float,
) -> GroupStatus:
    name = as_text(raw["name"])
    consumers = [
        ConsumerStatus(as_text(c["name"]), int(c["pending"]), int(c["idle"]))
        for c in handle.consumers_info(name)
    ]
    pending_list = (
        db.consumer_group(name, [handle.key]).streams[handle.key].pending(count=PENDING_SCAN_LIMIT)
    )
    entries_read = raw.get("entries-read")
    lag = raw.get("lag")
    group = GroupStatus(
        name=name,
        consumers=consumers,
        pending=int(raw["pending"]),
        oldest_pending_id=as_text(pending_list[0]["message_id"]) if pending_list else None,
        oldest_pending_idle_ms=max(
            (int(p["time_since_delivered"]) for p in pending_list), default=None
        ),
        max_delivery_count=max((int(p["times_delivered"]) for p in pending_list), default=None),
        pending_scanned=len(pending_list),
        last_delivered_id=as_text(raw["last-delivered-id"]),
        entries_read=None if entries_read is None else int(entries_read),
        lag=None if lag is None else int(lag),
        lost_to_trimming=counts[0].get(name, 0),
        dead_lettered=counts[1].get(name, 0),
    )
    ledger = {as_text(k): int(v) for k, v in stored_ledger.items()}
    before_start = ledger.pop("entries_before_start", None)
    group.settled = {k.removeprefix(SETTLED): v for k, v in ledger.items() if k.startswith(SETTLED)}
    group.facts = {k: v for k, v in ledger.items() if not k.startswith(SETTLED)}
    if group.settled and before_start is not None and group.lag is not None:
        group.unaccounted = (entries_added - before_start) - (
            sum(group.settled.values())
            + group.dead_lettered
            + group.lost_to_trimming
            + group.pending
            + group.lag
        )
    group.warnings = trim_warnings(group, maxlen, first_id, warn_ratio)
    if group.unaccounted:
        group.warnings.append(f"ledger does not balance: {group.unaccounted} entries unaccounted")
    if went_back := group.facts.get("stream_went_back"):
        group.warnings.append(
            f"Redis came back from older data ({went_back}x, seen by a worker): entries written"
            " after that copy are lost; readings with seq count them in seq_gaps"
        )
    return group


def format_status(status: StreamStatus) -> str:
    """Human-readable report, one block per group."""
    if not status.exists:
        return f"stream {status.stream}: does not exist yet (dead letters: {status.dead_letters})"
    fill = status.length / status.maxlen
    lines = [
        f"stream {status.stream}: {status.length} entries of MAXLEN ~{status.maxlen} "
        f"({fill:.0%}; maxlen {status.maxlen_source})",
        f"  first {status.first_id}  last {status.last_id}  ever added {status.entries_added}",
        f"  dead letters: {status.dead_letters}",
        f"  devices in the registry: {status.devices}; fields dropped from written readings: "
        f"{status.dropped_fields} (per sensor: telemetry devices list)",
    ]
    if status.rolled_up_to_ms is not None:
        behind_s = time.time() - status.rolled_up_to_ms / 1000
        lines.append(
            f"  coarse tiers rolled up to {_utc(status.rolled_up_to_ms)} ({behind_s:.0f}s ago)"
        )
        if behind_s > ROLLUP_WARN_S:
            lines.append(
                "  WARNING: the coarse tiers are not being rolled up: is an aggregator running?"
            )
    if not status.groups:
        lines.append("  no consumer groups")
    for g in status.groups:
        idle = (
            "-" if g.oldest_pending_idle_ms is None else f"{g.oldest_pending_idle_ms / 1000:.1f}s"
        )
        scanned = "" if g.pending_scanned >= g.pending else f" (first {g.pending_scanned} scanned)"
        held = (
            f"    pending {g.pending}: oldest idle {idle}, "
            f"most deliveries {_or_unknown(g.max_delivery_count)}{scanned}"
            if g.pending
            else "    pending 0"
        )
        lines += [
            f"  group {g.name}: lag {_or_unknown(g.lag)}, read {_or_unknown(g.entries_read)}, "
            f"last delivered {g.last_delivered_id}, lost to trimming {g.lost_to_trimming}",
            held,
        ]
        if g.settled:
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(g.settled.items()))
            lines.append(
                f"    ledger: {outcomes}; dead-lettered {g.dead_lettered}; "
                f"unaccounted {_or_unknown(g.unaccounted)}"
            )
        if g.facts:
            lines.append("    " + ", ".join(f"{k} {v}" for k, v in sorted(g.facts.items())))
        for c in g.consumers:
            lines.append(
                f"    consumer {c.name}: pending {c.pending}, idle {c.idle_ms / 1000:.1f}s"
            )
        lines += [f"    WARNING: {w}" for w in g.warnings]
    return "\n".join(lines)


def shard_totals(statuses: Sequence[StreamStatus]) -> dict[str, Any]:
    """What the shards hold together: entries, dead letters, and per group its lag, pending
    entries, losses and ledger summed."""
    groups: dict[str, dict[str, Any]] = {}
    for status in statuses:
        for g in status.groups:
            total = groups.setdefault(g.name, {"lag": 0, "pending": 0, "lost_to_trimming": 0,
                                               "dead_lettered": 0, "unaccounted": 0,
                                               "settled": {}, "shards": 0})  # fmt: skip
            total["shards"] += 1
            for name in ("lag", "unaccounted"):
                value = getattr(g, name)
                total[name] = None if value is None or total[name] is None else total[name] + value
            for name in ("pending", "lost_to_trimming", "dead_lettered"):
                total[name] += getattr(g, name)
            for outcome, count in g.settled.items():
                total["settled"][outcome] = total["settled"].get(outcome, 0) + count
    return {
        "shards": len(statuses),
        "length": sum(s.length for s in statuses),
        "entries_added": sum(s.entries_added for s in statuses),
        "dead_letters": sum(s.dead_letters for s in statuses),
        "devices": sum(s.devices for s in statuses),
        "dropped_fields": sum(s.dropped_fields for s in statuses),
        "groups": groups,
    }


def status_report(statuses: Sequence[StreamStatus]) -> dict[str, Any]:
    """The JSON of `telemetry status` and `/groups`: the stream's status, or each shard's and
    their totals."""
    if len(statuses) == 1:
        return statuses[0].as_dict()
    return {"shards": [status.as_dict() for status in statuses], "total": shard_totals(statuses)}


def format_report(statuses: Sequence[StreamStatus]) -> str:
    """The text of `telemetry status`: the stream's report, or each shard's and their totals."""
    if len(statuses) == 1:
        return format_status(statuses[0])
    return "\n".join([*map(format_status, statuses), format_totals(statuses)])


def format_totals(statuses: Sequence[StreamStatus]) -> str:
    totals = shard_totals(statuses)
    lines = [
        f"all {totals['shards']} shards: {totals['length']} entries, ever added "
        f"{totals['entries_added']}, dead letters {totals['dead_letters']}, devices "
        f"{totals['devices']}, dropped fields {totals['dropped_fields']}"
    ]
    for name, g in totals["groups"].items():
        missing = totals["shards"] - g["shards"]
        lines.append(
            f"  group {name}: lag {_or_unknown(g['lag'])}, pending {g['pending']}, lost to "
            f"trimming {g['lost_to_trimming']}, dead-lettered {g['dead_lettered']}, unaccounted "
            f"{_or_unknown(g['unaccounted'])}"
            + (f" (absent from {missing} shards)" if missing else "")
        )
    return "\n".join(lines)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _or_unknown(value: int | None) -> str:
    return "unknown" if value is None else str(value)
