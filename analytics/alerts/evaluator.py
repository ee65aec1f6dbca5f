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
from typing import Any, NamedTuple

import redis

from analytics.alerts.machine import RAISED, Decision, RuleState, leaves_fresh_state, step
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
# Bound on the (rule, sensor) states one process keeps between batches.
STATE_CACHE_LIMIT = 2_000_000


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


Clock = tuple[int, int | None]


class _Plan(NamedTuple):
    stateful: tuple[tuple[int, Rule, str], ...]
    silence: tuple[tuple[int, Rule], ...]


class _StateCache:
    """What this worker knows of the group's state in Redis, valid while the state version (bumped
    by every settled batch) is the one this worker last saw. One worker alone then reads no state
    at all; with several, a batch settled elsewhere invalidates it and everything is read again.
    `None` values are known to be absent (a fresh state)."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.clocks: dict[str, Clock | None] = {}
        self.states: dict[tuple[int, str], RuleState | None] = {}
        self.touched: set[tuple[int, str]] = set()

    def forget(self) -> None:
        self.version = None
        self.clocks.clear()
        self.states.clear()


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
        self._plans: dict[str, _Plan] = {}
        self._cache = _StateCache()

    def plan_for(self, sensor_id: str) -> _Plan:
        """The rules that select a sensor, split by how they are evaluated."""
        plan = self._plans.get(sensor_id)
        if plan is None:
            if len(self._plans) >= RULES_CACHE_LIMIT:
                self._plans.clear()
            selected = [(i, r) for i, r in enumerate(self.rules) if r.selects(sensor_id)]
            plan = self._plans[sensor_id] = _Plan(
                stateful=tuple((i, r, r.metric or "") for i, r in selected if r.kind != "silence"),
                silence=tuple((i, r) for i, r in selected if r.kind == "silence"),
            )
        return plan

    def __call__(self, batch: Batch[Reading]) -> None:
        while True:
            gate = self._snapshot(batch)
            if gate == BLOCKED:
                self.stats.deferred += 1
                raise Deferred("older entries of the group are not settled yet")
            if gate == NOT_OURS:
                self._dropped(batch)
                return
            args = self._evaluate(batch)
            try:
                with redis_errors():
                    result, version = COMMIT(self.client, args.keys, args.argv)
            except BaseException:
                # Evaluation changed the cached states in place; only a settled batch makes
                # them Redis's.
                self._cache.forget()
                raise
            if result == 1:
                self._cache.version = int(version)
            else:
                self._cache.forget()
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

    def _snapshot(self, batch: Batch[Reading]) -> str:
        """Check the gate and bring the cache up to date for the batch, in one transaction."""
        cache = self._cache
        if len(cache.states) > STATE_CACHE_LIMIT:
            cache.forget()  # memory stays bounded; this batch reads what it needs again
        was_valid = cache.version is not None
        in_batch = {entry.value.sensor_id for entry in batch.entries}
        sensors = sorted(in_batch - cache.clocks.keys())
        unknown: dict[int, list[str]] = {}
        for sensor in in_batch:
            for i, _, _ in self.plan_for(sensor).stateful:
                if (i, sensor) not in cache.states:
                    unknown.setdefault(i, []).append(sensor)
        ids = batch.ids
        pipe = self.client.pipeline(transaction=True)
        pipe.xpending_range(self.keys.stream, GROUP, "-", ids[-1], len(ids) + 1)
        pipe.get(self.alert_keys.version)
        pipe.hmget(self.alert_keys.clock, sensors or [""])
        for i, names in unknown.items():
            pipe.hmget(self.alert_keys.state(self.rules[i].name), names)
        with redis_errors():
            replies = pipe.execute()
        gate = _gate(replies[0], ids, batch.consumer)
        if gate != OPEN:
            return gate
        version = int(replies[1] or 0)
        if version != cache.version:
            cache.forget()
            if was_valid:
                # Another worker settled batches since: read everything again.
                return self._snapshot(batch)
            cache.version = version
        for sensor, text in zip(sensors, replies[2], strict=False):
            if text is None:
                cache.clocks[sensor] = None
            else:
                ts, _, seq = text.partition(":")
                cache.clocks[sensor] = (int(ts), int(seq) if seq else None)
        for (i, names), values in zip(unknown.items(), replies[3:], strict=True):
            for sensor, text in zip(names, values, strict=True):
                cache.states[(i, sensor)] = None if text is None else RuleState.decode(text)
        return OPEN

    def _evaluate(self, batch: Batch[Reading]) -> _CommitArgs:
        args = _CommitArgs(self.keys, self.alert_keys, batch, self.alerts_maxlen)
        cache = self._cache
        cache.touched.clear()
        clocks = cache.clocks
        states = cache.states
        rules = self.rules
        stale = 0
        changes: list[tuple[Rule, str, Decision, dict[str, str]]] = []
        heard: dict[tuple[int, str], tuple[int, str, int]] = {}
        for entry in batch.entries:
            reading = entry.value
            sensor = reading.sensor_id
            metrics = reading.metrics
            plan = self.plan_for(sensor)
            for i, rule in plan.silence:
                if rule.metric in metrics or not rule.metric:
                    heard[(i, sensor)] = (entry_time_ms(entry.id), entry.id, reading.ts_ms)
            if _is_stale(reading, clocks.get(sensor)):
                stale += 1
                continue
            clocks[sensor] = (reading.ts_ms, reading.seq)
            for i, rule, metric in plan.stateful:
                value = metrics.get(metric)
                if value is None:
                    continue
                key = (i, sensor)
                state = states.get(key)
                if state is None:
                    if leaves_fresh_state(rule, value):
                        continue
                    state = states[key] = RuleState()
                cache.touched.add(key)
                decision = step(rule, state, reading.ts_ms, value)
                if decision is not None:
                    record = change_record(rule, sensor, entry.id, reading.ts_ms, value, decision)
                    changes.append((rule, sensor, decision, record))
        args.ledger(len(batch.entries) - stale, stale)
        in_batch = {entry.value.sensor_id for entry in batch.entries}
        args.clocks({s: clock for s in in_batch if (clock := clocks.get(s)) is not None})
        touched_by_rule: dict[int, list[str]] = {}
        for i, sensor in cache.touched:
            touched_by_rule.setdefault(i, []).append(sensor)
        args.states(
            (self.alert_keys.state(rules[i].name), names, [_encoded(states[(i, s)]) for s in names])
            for i, names in touched_by_rule.items()
        )
        args.changes_section(changes)
        heard_by_rule: dict[int, list[tuple[str, int, str, int]]] = {}
        for (i, sensor), (heard_ms, entry_id, ts) in heard.items():
            heard_by_rule.setdefault(i, []).append((sensor, heard_ms, entry_id, ts))
        args.heard_section(
            (self.alert_keys.heard(rules[i].name), rules[i], rows)
            for i, rows in heard_by_rule.items()
        )
        return args


def _encoded(state: RuleState | None) -> str:
    return "" if state is None else state.encode()


def _is_stale(reading: Reading, clock: Clock | None) -> bool:
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
    """KEYS and ARGV for one call of the commit script; lists packed one argument each."""

    def __init__(self, keys: StreamKeys, alert_keys: AlertKeys, batch: Batch[Reading],
                 alerts_maxlen: int) -> None:  # fmt: skip
        self.keys = [
            keys.stream,
            keys.ledger(GROUP),
            alert_keys.stream,
            alert_keys.open,
            alert_keys.clock,
            alert_keys.version,
        ]
        self._index: dict[str, int] = {}
        ids = batch.ids
        self.argv: list[Any] = [GROUP, batch.consumer, ids[-1], alerts_maxlen, len(ids),
                                ",".join(ids)]  # fmt: skip
        self.changes = 0

    def key(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            self.keys.append(name)
            index = self._index[name] = len(self.keys)
        return index

    def ledger(self, evaluated: int, stale: int) -> None:
        increments = [(f"{SETTLED}evaluated", evaluated)]
        if stale:
            increments.append((f"{SETTLED}stale", stale))
        self.argv.append(len(increments))
        for name, amount in increments:
            self.argv += [name, amount]

    def clocks(self, clocks: Mapping[str, tuple[int, int | None]]) -> None:
        self.argv += [
            len(clocks),
            ",".join(clocks),
            ",".join(f"{ts}:{'' if seq is None else seq}" for ts, seq in clocks.values()),
        ]

    def states(self, updates: Iterable[tuple[str, list[str], list[str]]]) -> None:
        rows = list(updates)
        self.argv.append(len(rows))
        for key, sensors, states in rows:
            self.argv += [self.key(key), len(sensors), ",".join(sensors), "/".join(states)]

    def changes_section(self, changes: Sequence[tuple[Rule, str, Decision, dict[str, str]]]
                        ) -> None:  # fmt: skip
        self.changes = len(changes)
        self.argv.append(len(changes))
        for rule, sensor, decision, record in changes:
            self.argv += [open_field(sensor, rule.name), decision.state, json.dumps(record)]
            self._fields(record)

    def heard_section(self, heard: Iterable[tuple[str, Rule, list[tuple[str, int, str, int]]]]
                      ) -> None:  # fmt: skip
        rows = list(heard)
        self.argv.append(len(rows))
        for key, rule, sensors in rows:
            self.argv += [self.key(key), rule.name]
            self._fields(silence_template(rule) | {"message": "heard from again"})
            self.argv += [
                len(sensors),
                ",".join(s[0] for s in sensors),
                ",".join(str(s[1]) for s in sensors),
                ",".join(str(s[3]) for s in sensors),
                ",".join(s[2] for s in sensors),
            ]

    def _fields(self, record: Mapping[str, str]) -> None:
        self.argv.append(len(record))
        for name, value in record.items():
            self.argv += [name, value]
