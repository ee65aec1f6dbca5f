"""Maintenance silences: for a while, alert changes of some sensors, labels or rules reach no
person (`[[notify]]` targets); the alerts group still raises and records them. Not to be confused
with the `silence` rule type, which raises an alert when a sensor stops speaking.

Silences live in one hash beside the first shard's alerts stream (`silences_home`), which records
each one added or removed; an expired silence is dropped the next time silences are read.
"""

from __future__ import annotations

import fnmatch
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from analytics.alerts.listing import AlertSources
from analytics.alerts.rules import RULE_NAME
from analytics.times import iso
from ingest.errors import SettingsError
from ingest.keys import AlertKeys
from ingest.labels import Selector, parse_selector
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import Arg, LuaScript

SILENCES = LuaScript("analytics.alerts", "silences.lua")
MAX_SILENCES = 1000
MAX_TEXT = 500
MAX_GLOB = 256
REFRESH_S = 2.0


def silences_home(sources: AlertSources) -> tuple[redis.Redis, AlertKeys]:
    """Where silences are kept: beside the first shard's alerts stream."""
    return sources[0]


def _flat(record: Mapping[str, str]) -> list[Arg]:
    """A record as the script takes it: name, value, name, value..."""
    return [item for pair in record.items() for item in pair]


class ActionError(SettingsError):
    """A silence or acknowledgement that cannot be made; the message says what to fix."""


@dataclass(frozen=True)
class Silence:
    id: str
    sensors: str
    rules: str
    labels: Selector
    starts_ms: int
    ends_ms: int
    by: str
    comment: str = ""

    def covers(self, change: Mapping[str, str], labels: Mapping[str, str], now_ms: int) -> bool:
        return (
            self.starts_ms <= now_ms < self.ends_ms
            and fnmatch.fnmatchcase(change.get("sensor_id", ""), self.sensors)
            and fnmatch.fnmatchcase(change.get("rule", ""), self.rules)
            and self.labels.matches(labels)
        )

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    def as_dict(self) -> dict[str, str | int]:
        return {"id": self.id, "sensors": self.sensors, "rules": self.rules,
                "labels": str(self.labels), "starts_ms": self.starts_ms, "ends_ms": self.ends_ms,
                "by": self.by, "comment": self.comment}  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Silence:
        raw = json.loads(text)
        return cls(
            id=raw["id"], sensors=raw["sensors"], rules=raw["rules"],
            labels=parse_selector(raw["labels"]), starts_ms=int(raw["starts_ms"]),
            ends_ms=int(raw["ends_ms"]), by=raw["by"], comment=raw.get("comment", ""),
        )  # fmt: skip


def checked_text(name: str, value: str, most: int) -> str:
    if len(value) > most:
        raise ActionError(f"{name} is longer than {most} characters")
    if any(ord(c) < 32 for c in value):
        raise ActionError(f"{name} has control characters")
    return value


def new_silence(
    *, sensors: str = "*", rules: str = "*", labels: str = "", duration_ms: int, by: str,
    comment: str = "", now_ms: int,
) -> Silence:  # fmt: skip
    """A checked silence from now for `duration_ms`; ActionError says what is wrong."""
    if duration_ms <= 0:
        raise ActionError("a silence lasts a positive time, such as 2h")
    if duration_ms > 366 * 86_400_000:
        raise ActionError("a silence lasts at most a year")
    try:
        selector = parse_selector(labels)
    except ValueError as exc:
        raise ActionError(f"labels: {exc}") from None
    if sensors == rules == "*" and not selector.terms:
        raise ActionError("a silence needs a sensor glob, a rule glob or labels; "
                           "silencing everything is not offered")  # fmt: skip
    if rules != "*" and not RULE_NAME.fullmatch(rules.replace("*", "x").replace("?", "x")):
        raise ActionError(f"rules must be a rule name or glob, got {rules!r}")
    return Silence(
        id=secrets.token_hex(4),
        sensors=checked_text("sensors", sensors, MAX_GLOB) or "*",
        rules=rules or "*",
        labels=selector,
        starts_ms=now_ms,
        ends_ms=now_ms + duration_ms,
        by=checked_text("by", by, 64) or "unknown",
        comment=checked_text("comment", comment, MAX_TEXT),
    )


def add_silence(client: redis.Redis, keys: AlertKeys, silence: Silence, maxlen: int) -> str:
    """Keep the silence and record it on the alerts stream; the stream entry ID."""
    message = f"silenced until {iso(silence.ends_ms)} by {silence.by}"
    if silence.comment:
        message += f": {silence.comment}"
    record = {"sensor_id": silence.sensors, "rule": silence.rules, "state": "silenced",
              "ts": str(silence.starts_ms), "until": str(silence.ends_ms),
              "labels": str(silence.labels), "by": silence.by, "comment": silence.comment,
              "silence": silence.id, "message": message}  # fmt: skip
    args: list[Arg] = ["add", silence.id, silence.to_json(), MAX_SILENCES, maxlen, *_flat(record)]
    with redis_errors():
        entry = SILENCES(client, [keys.stream, keys.silences], args)
        if not entry:
            # Expired silences make room.
            active_silences(client, keys, silence.starts_ms)
            entry = SILENCES(client, [keys.stream, keys.silences], args)
    if not entry:
        raise ActionError(f"{MAX_SILENCES} silences are active already; remove some first")
    return str(entry)


def remove_silence(
    client: redis.Redis, keys: AlertKeys, silence_id: str, by: str, maxlen: int, now_ms: int
) -> bool:
    """End a silence now; False when there is no such silence."""
    found = {s.id: s for s in active_silences(client, keys, now_ms)}.get(silence_id)
    if found is None:
        return False
    record = {"sensor_id": found.sensors, "rule": found.rules, "state": "unsilenced",
              "ts": str(now_ms), "labels": str(found.labels), "by": checked_text("by", by, 64),
              "silence": found.id, "message": f"silence {found.id} ended by {by}"}  # fmt: skip
    with redis_errors():
        entry = SILENCES(
            client,
            [keys.stream, keys.silences],
            ["remove", silence_id, "", 0, maxlen, *_flat(record)],
        )
    return bool(entry)


def active_silences(client: redis.Redis, keys: AlertKeys, now_ms: int) -> list[Silence]:
    """The silences in force or to come, soonest ending first; expired ones are dropped."""
    with redis_errors():
        raw: dict[str, str] = client.hgetall(keys.silences)  # type: ignore[assignment]
    found: list[Silence] = []
    ended: list[str] = []
    for silence_id, text in raw.items():
        try:
            silence = Silence.from_json(text)
        except (ValueError, KeyError, TypeError):
            ended.append(silence_id)
            continue
        if silence.ends_ms > now_ms:
            found.append(silence)
        else:
            ended.append(silence_id)
    if ended:
        with redis_errors():
            client.hdel(keys.silences, *ended)
    return sorted(found, key=lambda s: s.ends_ms)


@dataclass
class SilenceView:
    """The silences as the fan-out sees them, read again every REFRESH_S."""

    client: redis.Redis
    keys: AlertKeys
    _silences: list[Silence] = field(default_factory=list)
    _read_at: float = -REFRESH_S
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def covering(self, change: Mapping[str, str], labels: Mapping[str, str]) -> Silence | None:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at >= REFRESH_S:
                self._silences = active_silences(self.client, self.keys, time.time_ns() // 10**6)
                self._read_at = now
            silences = self._silences
        now_ms = time.time_ns() // 10**6
        return next((s for s in silences if s.covers(change, labels, now_ms)), None)
