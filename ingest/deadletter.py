"""The dead-letter stream: entries that could not be processed, with the reason, and replay.

A dead letter is itself a flat stream entry, readable in redis-cli:
`stream`, `group`, `id` (the original entry ID), `consumer`, `deliveries`, `reason`, and `fields`,
the original fields as a JSON object (bytes that were not UTF-8 kept as surrogate escapes).

A dead letter says what was refused; it is not an archive. A field's value is kept up to
KEPT_CHARS characters and all fields up to KEPT_TOTAL_CHARS; for a value cut short `cut` (a JSON
object) gives its whole length and SHA-256, and under "..." how many fields were left out, so
whatever a device sends, a dead letter stays a few KiB. A letter with something cut cannot be
replayed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from ingest.contract.reading import Reading, entry_order, entry_time_ms
from ingest.errors import InvalidEntry
from ingest.keys import StreamKeys
from ingest.redis.connection import connect, fields_arg, read_range
from ingest.redis.errors import redis_errors
from ingest.settings import Settings
from ingest.shards import shard_of, shards

KEPT_CHARS = 4096
KEPT_TOTAL_CHARS = 16_384
REASON_CHARS = 2000
# In `cut`: how many fields were left out once KEPT_TOTAL_CHARS was reached.
LEFT_OUT = "..."


@dataclass(frozen=True)
class DeadLetter:
    dead_id: str
    stream: str
    group: str
    entry_id: str
    consumer: str
    deliveries: int
    reason: str
    fields: Mapping[str, str]
    # Fields whose values were cut short: name -> {"length": ..., "sha256": ...}.
    cut: Mapping[str, Mapping[str, object]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_entry(cls, dead_id: str, record: Mapping[str, str]) -> DeadLetter:
        try:
            fields = json.loads(record.get("fields", "{}"))
        except json.JSONDecodeError:
            fields = {}
        return cls(
            dead_id=dead_id,
            stream=record.get("stream", ""),
            group=record.get("group", ""),
            entry_id=record.get("id", ""),
            consumer=record.get("consumer", ""),
            deliveries=int(record.get("deliveries", "0") or 0),
            reason=record.get("reason", ""),
            fields={str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {},
            cut=_json_object(record.get("cut", "{}")),
        )


def _json_object(text: str) -> dict[str, Mapping[str, object]]:
    try:
        found = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def dead_letter_record(
    stream: str,
    group: str,
    entry_id: str,
    consumer: str,
    deliveries: int,
    reason: str,
    fields: Mapping[str, str | bytes] | None,
) -> dict[str, str]:
    """The dead letter's fields. A value given as bytes (a device's raw payload) is cut before
    it is decoded, bytes that are not UTF-8 kept as surrogate escapes."""
    kept: dict[str, str] = {}
    cut: dict[str, dict[str, object]] = {}
    budget = KEPT_TOTAL_CHARS
    for name, value in (fields or {}).items():
        if budget <= 0:
            cut[LEFT_OUT] = {"fields": len(fields or {}) - len(kept)}
            break
        short = name[:KEPT_CHARS]
        room = min(KEPT_CHARS, budget)
        whole = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        kept[short] = (
            value[:room].decode("utf-8", "surrogateescape")
            if isinstance(value, bytes)
            else value[:room]
        )
        budget -= len(short) + len(kept[short])
        if len(value) > room or short != name:
            cut[short] = {"length": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}
    record = {
        "stream": stream,
        "group": group,
        "id": entry_id,
        "consumer": consumer,
        "deliveries": str(deliveries),
        "reason": reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "...",
        "fields": json.dumps(kept, ensure_ascii=True),
    }
    if cut:
        record["cut"] = json.dumps(cut)
    return record


def queue_dead_letter(
    pipe: Pipeline, keys: StreamKeys, maxlen: int, record: Mapping[str, str]
) -> None:
    pipe.xadd(keys.dead, fields_arg(record), maxlen=maxlen, approximate=True)


def list_dead_letters(
    client: redis.Redis, keys: StreamKeys, count: int = 100, start: str = "-"
) -> list[DeadLetter]:
    with redis_errors():
        entries = read_range(client, keys.dead, start, count=count)
    return [DeadLetter.from_entry(dead_id, record) for dead_id, record in entries]


@dataclass(frozen=True)
class ReplayResult:
    dead_id: str
    new_id: str | None
    error: str | None


def repaired_fields(
    letter: DeadLetter, set_fields: Mapping[str, str], unset_fields: Sequence[str]
) -> dict[str, str]:
    """The original fields with the user's fixes applied, and the original event time kept."""
    fields = {k: v for k, v in letter.fields.items() if k not in unset_fields}
    fields.update(set_fields)
    if "ts" not in fields and letter.entry_id:
        # Without `ts` the event time was the old entry ID's; the new ID would move it.
        fields["ts"] = str(entry_time_ms(letter.entry_id))
    return fields


# Where a replayed reading goes: the client and stream of its sensor's shard.
Route = Callable[[Mapping[str, str]], tuple[redis.Redis, str]]


def replay(
    client: redis.Redis,
    keys: StreamKeys,
    maxlen: int,
    letters: Sequence[DeadLetter],
    set_fields: Mapping[str, str] | None = None,
    unset_fields: Sequence[str] = (),
    route: Route | None = None,
) -> list[ReplayResult]:
    """Put dead letters back on their stream (or, with `route`, on their sensor's shard) and
    remove them from the dead-letter stream.

    Each replayed entry must pass the stream contract first; one that still does not stays in
    the dead-letter stream and its result says why. Adding the entry and removing the dead letter
    happen in one transaction, so a replay is never lost nor doubled; onto another shard, the
    entry is added first, so a failure in between leaves the letter to replay again (a reading
    with `seq` is still counted once).
    """
    results = []
    for letter in {letter.dead_id: letter for letter in letters}.values():
        if letter.cut:
            names = ", ".join(sorted(letter.cut))
            results.append(ReplayResult(letter.dead_id, None, f"{names} cut short when "
                                        "dead-lettered; it cannot be replayed"))  # fmt: skip
            continue
        fields = repaired_fields(letter, set_fields or {}, unset_fields)
        try:
            Reading.decode(letter.entry_id or "0-0", fields)
        except InvalidEntry as exc:
            results.append(ReplayResult(letter.dead_id, None, exc.reason))
            continue
        target, stream = (client, keys.stream) if route is None else route(fields)
        with redis_errors():
            if stream == keys.stream:
                pipe = client.pipeline(transaction=True)
                pipe.xadd(stream, fields_arg(fields), maxlen=maxlen, approximate=True)
                pipe.xdel(keys.dead, letter.dead_id)
                new_id, _ = pipe.execute()
            else:
                new_id = target.xadd(stream, fields_arg(fields), maxlen=maxlen, approximate=True)
                client.xdel(keys.dead, letter.dead_id)
        results.append(ReplayResult(letter.dead_id, str(new_id), None))
    return results


class ShardedDeadLetters:
    """The dead-letter streams of every shard, as one: listed together, oldest first, and
    each letter replayed onto its sensor's shard."""

    def __init__(self, settings: Settings) -> None:
        every = shards(settings)
        self._shards = [(connect(shard.settings), StreamKeys(shard.stream)) for shard in every]
        self._maxlen = settings.maxlen

    def listed(self, count: int, start: str = "-") -> list[DeadLetter]:
        found = [letter for client, keys in self._shards
                 for letter in list_dead_letters(client, keys, count, start)]  # fmt: skip
        return sorted(found, key=lambda letter: entry_order(letter.dead_id))[:count]

    def chosen(self, dead_ids: Sequence[str] | None) -> tuple[list[list[DeadLetter]], list[str]]:
        """The letters with these IDs (None: every one), shard by shard, and the IDs found in
        no shard."""
        per_shard = [self._chosen(client, keys, dead_ids) for client, keys in self._shards]
        found = {letter.dead_id for letters in per_shard for letter in letters}
        return per_shard, [dead_id for dead_id in dead_ids or () if dead_id not in found]

    def replay(
        self,
        per_shard: Sequence[Sequence[DeadLetter]],
        set_fields: Mapping[str, str] | None = None,
        unset_fields: Sequence[str] = (),
    ) -> list[ReplayResult]:
        """Replay letters `chosen` found, each onto its sensor's shard."""
        results: list[ReplayResult] = []
        for (client, keys), letters in zip(self._shards, per_shard, strict=True):
            results += replay(client, keys, self._maxlen, letters, set_fields, unset_fields,
                              route=self._route)  # fmt: skip
        return results

    def _route(self, fields: Mapping[str, str]) -> tuple[redis.Redis, str]:
        client, keys = self._shards[shard_of(fields.get("sensor_id", ""), len(self._shards))]
        return client, keys.stream

    @staticmethod
    def _chosen(
        client: redis.Redis, keys: StreamKeys, dead_ids: Sequence[str] | None
    ) -> list[DeadLetter]:
        if dead_ids is None:
            letters, cursor = [], "-"
            while batch := list_dead_letters(client, keys, 1000, cursor):
                letters += batch
                cursor = "(" + batch[-1].dead_id
            return letters
        chosen = []
        for dead_id in dict.fromkeys(dead_ids):
            letter = list_dead_letters(client, keys, 1, dead_id)
            if letter and letter[0].dead_id == dead_id:
                chosen.append(letter[0])
        return chosen
