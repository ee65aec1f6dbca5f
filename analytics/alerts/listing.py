"""Reading alerts back: the open ones, and the history of changes on the alerts stream."""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from ingest.contract.reading import entry_order
from ingest.keys import AlertKeys
from ingest.redis.connection import connect, read_range_newest_first
from ingest.redis.errors import redis_errors
from ingest.settings import Settings
from ingest.shards import shard_for, shards


@dataclass(frozen=True)
class AlertChange:
    """One alert change (or, for open alerts, the change that raised it): raised, resolved,
    acknowledged; or a maintenance silence added or ended (`sensor_id` and `rule` are then its
    globs)."""

    sensor_id: str
    rule: str
    kind: str
    severity: str
    metric: str
    state: str
    ts_ms: int
    # The reading's value (a silence rule: ms without a reading) and the rule's level.
    value: float | None
    limit: float | None
    message: str
    # When the alert was raised, and its alerts stream entry (for an open alert: the entry that
    # raised it).
    raised_ms: int | None = None
    id: str | None = None
    # An acknowledgement or silence: who, and their note; an open alert: who acknowledged it.
    by: str | None = None
    comment: str | None = None
    acknowledged_ms: int | None = None

    @classmethod
    def from_fields(cls, fields: dict[str, str], entry_id: str | None = None) -> AlertChange:
        raised = fields.get("raised_ts") or (fields["ts"] if fields["state"] == "raised" else "")
        acknowledged = fields.get("acknowledged_ms")
        return cls(
            sensor_id=fields["sensor_id"],
            rule=fields["rule"],
            kind=fields.get("kind", ""),
            severity=fields.get("severity", ""),
            metric=fields.get("metric", ""),
            state=fields["state"],
            ts_ms=int(fields["ts"]),
            value=_number(fields.get("value")),
            limit=_number(fields.get("limit")),
            message=fields.get("message", ""),
            raised_ms=int(raised) if raised else None,
            id=entry_id or fields.get("id"),
            by=fields.get("by") or fields.get("acknowledged_by"),
            comment=fields.get("comment"),
            acknowledged_ms=int(acknowledged) if acknowledged else None,
        )


def _number(text: str | None) -> float | None:
    """A recorded number; None when absent, or not finite (JSON has no NaN)."""
    try:
        number = float(text) if text else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) else None


AlertSources = list[tuple[redis.Redis, AlertKeys]]


def alert_sources(settings: Settings, clients: Sequence[redis.Redis] = ()) -> AlertSources:
    """A client and the alerts keys of each shard: the clients given, one per shard in order,
    or new ones."""
    every = shards(settings)
    chosen = clients or [connect(shard.settings) for shard in every]
    return [(client, AlertKeys(shard.settings.alerts_stream))
            for client, shard in zip(chosen, every, strict=True)]  # fmt: skip


def sensor_source(
    settings: Settings, sources: AlertSources, sensor_id: str
) -> tuple[redis.Redis, AlertKeys]:
    """The client and alerts keys of the shard a sensor's alerts live in."""
    return sources[shard_for(settings, sensor_id).index]


def list_alerts(
    sources: AlertSources,
    *,
    open_only: bool = False,
    sensor_glob: str = "*",
    since_ms: int | None = None,
    limit: int = 1000,
) -> list[AlertChange]:
    """Open alerts (newest first), or the changes recorded since `since_ms` (newest first),
    of every shard's alerts (a client and the keys of the shard's alerts stream each)."""
    found = [change for client, keys in sources for change in
             _shard_alerts(client, keys, open_only, sensor_glob, since_ms, limit)]  # fmt: skip
    if open_only:
        found.sort(key=lambda c: (-c.ts_ms, c.sensor_id, c.rule))
    elif len(sources) > 1:
        found.sort(key=lambda c: entry_order(c.id or "0-0"), reverse=True)
    return found[:limit]


def _shard_alerts(
    client: redis.Redis,
    keys: AlertKeys,
    open_only: bool,
    sensor_glob: str,
    since_ms: int | None,
    limit: int,
) -> list[AlertChange]:
    found: list[AlertChange] = []
    if open_only:
        with redis_errors():
            raw: dict[str, str] = client.hgetall(keys.open)  # type: ignore[assignment]
        for text in raw.values():
            change = AlertChange.from_fields(json.loads(text))
            if fnmatch.fnmatchcase(change.sensor_id, sensor_glob) and (
                since_ms is None or change.ts_ms >= since_ms
            ):
                found.append(change)
        found.sort(key=lambda c: (-c.ts_ms, c.sensor_id, c.rule))
        return found[:limit]
    oldest = "-" if since_ms is None else str(since_ms)
    newest = "+"
    while len(found) < limit:
        with redis_errors():
            page = read_range_newest_first(client, keys.stream, newest, oldest, count=1000)
        for entry_id, fields in page:
            if fnmatch.fnmatchcase(fields.get("sensor_id", ""), sensor_glob):
                found.append(AlertChange.from_fields(dict(fields), entry_id))
        if len(page) < 1000:
            break
        newest = f"({page[-1][0]}"
    return found[:limit]
