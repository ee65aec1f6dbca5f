"""The `alerts` consumer group's handler: readings in, alert changes out, in stream order.

A batch is evaluated against state read from Redis at a moment when every older entry of the
group is settled, and settled by one script that checks that again before writing; a batch with
older entries still open elsewhere is deferred. So however many workers share the group, each
(sensor, rule) sees its readings in stream order, exactly once, as a single worker would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from analytics.alerts.machine import RAISED, Decision, RuleState, step
from analytics.alerts.rules import Rule
from ingest.errors import redis_errors
from ingest.groups import Batch, Deferred
from ingest.keys import SETTLED, AlertKeys, StreamKeys
from ingest.reading import Reading, entry_time_ms
from ingest.scripts import LuaScript

log = logging.getLogger(__name__)

GROUP = "alerts"
COMMIT = LuaScript("analytics.alerts", "commit.lua")
OPEN, BLOCKED, NOT_OURS = "open", "blocked", "not ours"
# Bound on the sensors whose matching rules one process remembers.
RULES_CACHE_LIMIT = 200_000


@dataclass
class EvaluatorStats:
    batches: int = 0
    readings: int = 0
    stale: int = 0
    changes: int = 0
    deferred: int = 0
    not_owned: int = 0


def open_field(sensor_id: str, rule: str) -> str:
    return f"{sensor_id}|{rule}"


def change_record(rule: Rule, sensor_id: str, entry_id: str, ts_ms: int, value: float,
                  decision: Decision) -> dict[str, str]:  # fmt: skip
    """The fields of one alert change as it appears on the alerts stream."""
    if decision.state == RAISED:
        message = f"{rule.metric} {rule.limit_text} (got {decision.score:.4g})"
    else:
        message = f"{rule.metric} back past {decision.limit:g} (got {decision.score:.4g})"
    record = {
        "sensor_id": sensor_id,
        "rule": rule.name,
        "kind": rule.kind,
        "severity": rule.severity,
        "metric": rule.metric or "",
        "state": decision.state,
        "ts": str(ts_ms),
        "value": repr(value),
        "score": repr(decision.score),
        "limit": repr(decision.limit),
        "reading": entry_id,
        "message": message,
    }
    if decision.state != RAISED:
        record["raised_ts"] = str(decision.raised_ms)
    return record


def silence_template(rule: Rule) -> dict[str, str]:
    """The rule's part of a silence alert record; the sweep and the commit script add the rest."""
    return {
        "rule": rule.name,
        "kind": rule.kind,
        "severity": rule.severity,
        "metric": rule.metric or "",
        "limit": str(rule.after_ms),
        "message": f"no reading for {rule.after_ms / 1000:g}s",
    }


class _Snapshot:
    """The state a batch is evaluated against, read while every older entry was settled."""

    def __init__(self, clocks: dict[str, tuple[int, int | None]],
                 states: dict[tuple[int, str], RuleState]) -> None:  # fmt: skip
        self.clocks = clocks
        self.states = states
        self.touched: set[tuple[int, str]] = set()

    def state(self, rule_index: int, sensor_id: str) -> RuleState:
        key = (rule_index, sensor_id)
        self.touched.add(key)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = RuleState()
        return state


class AlertEvaluator:
    acknowledges = True

    def __init__(self, client: redis.Redis, keys: StreamKeys, alert_keys: AlertKeys,
                 rules: Sequence[Rule], alerts_maxlen: int) -> None:  # fmt: skip
        self.client = client
        self.keys = keys
        self.alert_keys = alert_keys
        self.rules = list(rules)
        self.alerts_maxlen = alerts_maxlen
        self.stats = EvaluatorStats()
        self._rules_of: dict[str, tuple[int, ...]] = {}

    def rules_for(self, sensor_id: str) -> tuple[int, ...]:
        found = self._rules_of.get(sensor_id)
        if found is None:
            if len(self._rules_of) >= RULES_CACHE_LIMIT:
                self._rules_of.clear()
            found = tuple(i for i, rule in enumerate(self.rules) if rule.selects(sensor_id))
            self._rules_of[sensor_id] = found
        return found

    def __call__(self, batch: Batch[Reading]) -> None:
        wanted = self._wanted_state(batch)
        while True:
            gate, snapshot = self._snapshot(batch, wanted)
            if gate == BLOCKED:
                self.stats.deferred += 1
                raise Deferred("older entries of the group are not settled yet")
            if gate == NOT_OURS:
                self._dropped(batch)
                return
            assert snapshot is not None
            args = self._evaluate(batch, snapshot)
            with redis_errors():
                result = COMMIT(self.client, args.keys, args.argv)
            if result == 1:
                self.stats.batches += 1
                self.stats.readings += len(batch.entries)
                self.stats.changes += args.changes
                return
            if result == 0:
                self._dropped(batch)
                return
            # An entry older than the batch was handed back to the group between the snapshot
            # and the commit (its consumer dropped it): read again.

    def _dropped(self, batch: Batch[Reading]) -> None:
        # Another consumer owns these entries now, or a re-sent call already settled them;
        # whatever this consumer still owns comes back through its pending list.
        self.stats.not_owned += 1
        log.info("batch of %d no longer ours; dropped", len(batch.entries))

    def _wanted_state(self, batch: Batch[Reading]) -> dict[int, list[str]]:
        """Rule index -> sensors of the batch whose state for that rule the evaluation reads."""
        wanted: dict[int, set[str]] = {}
        for entry in batch.entries:
            reading = entry.value
            for i in self.rules_for(reading.sensor_id):
                rule = self.rules[i]
                if rule.kind != "silence" and rule.metric in reading.metrics:
                    wanted.setdefault(i, set()).add(reading.sensor_id)
        return {i: sorted(sensors) for i, sensors in wanted.items()}

    def _snapshot(
        self, batch: Batch[Reading], wanted: Mapping[int, list[str]]
    ) -> tuple[str, _Snapshot | None]:
        ids = batch.ids
        sensors = sorted({entry.value.sensor_id for entry in batch.entries})
        pipe = self.client.pipeline(transaction=True)
        pipe.xpending_range(self.keys.stream, GROUP, "-", ids[-1], len(ids) + 1)
        pipe.hmget(self.alert_keys.clock, sensors)
        for i, names in wanted.items():
            pipe.hmget(self.alert_keys.state(self.rules[i].name), names)
        with redis_errors():
            replies = pipe.execute()
        gate = _gate(replies[0], ids, batch.consumer)
        if gate != OPEN:
            return gate, None
        clocks: dict[str, tuple[int, int | None]] = {}
        for sensor, text in zip(sensors, replies[1], strict=True):
            if text is not None:
                ts, _, seq = text.partition(":")
                clocks[sensor] = (int(ts), int(seq) if seq else None)
        states: dict[tuple[int, str], RuleState] = {}
        for (i, names), values in zip(wanted.items(), replies[2:], strict=True):
            for sensor, text in zip(names, values, strict=True):
                if text is not None:
                    states[(i, sensor)] = RuleState.decode(text)
        return OPEN, _Snapshot(clocks, states)

    def _evaluate(self, batch: Batch[Reading], snapshot: _Snapshot) -> _CommitArgs:
        args = _CommitArgs(self.keys, self.alert_keys, batch, self.alerts_maxlen)
        clocks = snapshot.clocks
        rules = self.rules
        stale = 0
        changes: list[tuple[Rule, str, str, Decision, dict[str, str]]] = []
        heard: dict[tuple[int, str], tuple[int, str, int]] = {}
        for entry in batch.entries:
            reading = entry.value
            sensor = reading.sensor_id
            matching = self.rules_for(sensor)
            for i in matching:
                rule = rules[i]
                if rule.kind == "silence" and (rule.metric in reading.metrics or not rule.metric):
                    heard[(i, sensor)] = (entry_time_ms(entry.id), entry.id, reading.ts_ms)
            if _is_stale(reading, clocks.get(sensor)):
                stale += 1
                continue
            clocks[sensor] = (reading.ts_ms, reading.seq)
            for i in matching:
                rule = rules[i]
                if rule.kind == "silence":
                    continue
                value = reading.metrics.get(rule.metric or "")
                if value is None:
                    continue
                decision = step(rule, snapshot.state(i, sensor), reading.ts_ms, value)
                if decision is not None:
                    record = change_record(rule, sensor, entry.id, reading.ts_ms, value, decision)
                    changes.append((rule, sensor, entry.id, decision, record))
        args.ledger(len(batch.entries) - stale, stale)
        args.clocks(clocks, {e.value.sensor_id for e in batch.entries})
        args.states(
            (self.alert_keys.state(rules[i].name), sensor, snapshot.states[(i, sensor)].encode())
            for i, sensor in snapshot.touched
        )
        args.changes_section(changes)
        args.heard_section(
            (self.alert_keys.heard(rules[i].name), sensor, heard_ms, rules[i], entry_id, ts)
            for (i, sensor), (heard_ms, entry_id, ts) in heard.items()
        )
        return args


def _is_stale(reading: Reading, clock: tuple[int, int | None] | None) -> bool:
    """Older than the newest reading evaluated for its sensor, or a repeat of it (same seq)."""
    if clock is None:
        return False
    ts_ms, seq = clock
    return reading.ts_ms < ts_ms or (
        reading.ts_ms == ts_ms and seq is not None and reading.seq == seq
    )


def _gate(pending: Sequence[Mapping[str, Any]], ids: Sequence[str], consumer: str) -> str:
    """The commit script's gate, read ahead: may this batch be evaluated now?"""
    ours = set(ids)
    for entry in pending:
        if str(entry["message_id"]) not in ours:
            return BLOCKED
        if str(entry["consumer"]) != consumer:
            return NOT_OURS
    return OPEN if len(pending) == len(ids) else NOT_OURS


class _CommitArgs:
    """KEYS and ARGV for one call of the commit script."""

    def __init__(self, keys: StreamKeys, alert_keys: AlertKeys, batch: Batch[Reading],
                 alerts_maxlen: int) -> None:  # fmt: skip
        self.keys = [
            keys.stream,
            keys.ledger(GROUP),
            alert_keys.stream,
            alert_keys.open,
            alert_keys.clock,
        ]
        self._index: dict[str, int] = {}
        ids = batch.ids
        self.argv: list[Any] = [GROUP, batch.consumer, ids[-1], alerts_maxlen, len(ids), *ids]
        self.changes = 0

    def key(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            self.keys.append(name)
            index = self._index[name] = len(self.keys)
        return index

    def _section(self, rows: Sequence[Sequence[Any]]) -> None:
        self.argv.append(len(rows))
        for row in rows:
            self.argv.extend(row)

    def ledger(self, evaluated: int, stale: int) -> None:
        self._section(
            [[f"{SETTLED}evaluated", evaluated]] + ([[f"{SETTLED}stale", stale]] if stale else [])
        )

    def clocks(self, clocks: Mapping[str, tuple[int, int | None]], sensors: set[str]) -> None:
        rows = []
        for sensor in sensors:
            if sensor in clocks:
                ts, seq = clocks[sensor]
                rows.append([sensor, f"{ts}:{'' if seq is None else seq}"])
        self._section(rows)

    def states(self, updates: Iterable[tuple[str, str, str]]) -> None:
        self._section([[self.key(key), sensor, state] for key, sensor, state in updates])

    def changes_section(self, changes: Sequence[tuple[Rule, str, str, Decision, dict[str, str]]]
                        ) -> None:  # fmt: skip
        self.changes = len(changes)
        self.argv.append(len(changes))
        for rule, sensor, _entry_id, decision, record in changes:
            self.argv += [open_field(sensor, rule.name), decision.state, json.dumps(record)]
            self.argv.append(len(record))
            for name, value in record.items():
                self.argv += [name, value]

    def heard_section(self, heard: Iterable[tuple[str, str, int, Rule, str, int]]) -> None:
        rows: list[list[Any]] = []
        for key, sensor, heard_ms, rule, entry_id, ts in heard:
            record = silence_template(rule) | {
                "sensor_id": sensor,
                "state": "resolved",
                "ts": str(ts),
                "reading": entry_id,
                "message": f"heard from again after {rule.after_ms / 1000:g}s of silence or more",
            }
            row: list[Any] = [self.key(key), sensor, heard_ms, open_field(sensor, rule.name),
                              len(record)]  # fmt: skip
            for name, value in record.items():
                row += [name, value]
            rows.append(row)
        self._section(rows)
