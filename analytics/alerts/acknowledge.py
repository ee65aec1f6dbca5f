"""Acknowledging an open alert: someone is on it. The open alert carries who and when until it
resolves, and the alerts stream records the acknowledgement."""

from __future__ import annotations

import redis

from analytics.alerts.commit import open_field
from analytics.alerts.silences import MAX_TEXT, checked_text
from ingest.keys import AlertKeys
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import LuaScript

ACKNOWLEDGE = LuaScript("analytics.alerts", "acknowledge.lua")


def acknowledge(
    client: redis.Redis, keys: AlertKeys, sensor_id: str, rule: str, *, by: str, comment: str,
    now_ms: int, maxlen: int,
) -> str | None:  # fmt: skip
    """The alerts stream entry recording it, or None when no such alert is open."""
    checked_text("by", by, 64)
    checked_text("comment", comment, MAX_TEXT)
    with redis_errors():
        entry = ACKNOWLEDGE(client, [keys.stream, keys.open],
                            [open_field(sensor_id, rule), by or "unknown", comment, now_ms,
                             maxlen])  # fmt: skip
    return str(entry) if entry else None
