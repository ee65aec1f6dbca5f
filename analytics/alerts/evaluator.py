"""The `alerts` consumer group's handler: readings in, alert changes out, in stream order.

A batch is evaluated against the state the last settled batch left (read from Redis, or held
since this worker settled it), and settled by one script that first checks that every older
entry of the group is settled and that no other batch was settled since; a batch with older
entries still open elsewhere is deferred. So however many workers share the group, each
(sensor, rule) sees its readings in stream order, exactly once, as a single worker would.

A batch is evaluated in rounds, the k-th reading of every sensor in round k, each rule over all
of a round's sensors at once (see `kernels`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import redis
from prometheus_client import Counter, Histogram

from analytics.alerts.commit import (
    RAISED,
    RESOLVED,
    Change,
    CommitArgs,
    Heard,
    HeardBy,
    change_record,
)
from analytics.alerts.kernels import Decisions, is_fresh, keeps_state, quiet_on_fresh, step
from analytics.alerts.kinds.base import Ints
from analytics.alerts.labelview import LabelView
from analytics.alerts.rules import Rule
from analytics.alerts.tables import NO_CLOCK, SLOT_LIMIT, Tables
from ingest.contract.columns import NO_SEQ, ReadingColumns
from ingest.contract.reading import entry_time_ms
from ingest.groups import Batch, Deferred
from ingest.groups.settlement import (
    GATE,
    NOT_OURS,
    OLDER_PENDING,
    SETTLE,
    SETTLE_LIBRARY,
    Gate,
    SettlingArgs,
)
from ingest.keys import AlertKeys, StreamKeys
from ingest.redis.errors import redis_errors
from ingest.redis.scripts import LuaScript
from ingest.settings import Settings

log = logging.getLogger(__name__)

GROUP = "alerts"
COMMIT = LuaScript("analytics.alerts", "commit.lua", prelude=SETTLE_LIBRARY)
ALERT_CHANGES = Counter(
    "telemetry_alert_worker_changes", "Alert changes this worker recorded", ["rule", "state"]
)
ALERT_LATENCY = Histogram(
    "telemetry_alert_latency_seconds",
    "From the deciding reading's arrival on the stream to its alert change being recorded",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


@dataclass
class EvaluatorStats:
    batches: int = 0
    readings: int = 0
    stale: int = 0
    changes: int = 0
    deferred: int = 0
    not_owned: int = 0


class _Columns(NamedTuple):
    """A batch as arrays, one row per entry in stream order."""

    slots: Ints
    ts: Ints
    seq: Ints
    # Occurrence of the row's sensor within the batch: 0 for its first reading, ...
    round: Ints
    values: dict[str, npt.NDArray[np.float64]]


# A metric devices report as 1 when they come online and 0 when they go (Sparkplug B births and
# deaths): 0 makes a silence rule's sensor silent at once.
ONLINE = "online"


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
        for rule in self.rules:
            for state in (RAISED, RESOLVED):
                ALERT_CHANGES.labels(rule.name, state)
        selects_by_label = any(rule.labels.terms for rule in self.rules)
        self.labels = LabelView(client, keys) if selects_by_label else None
        self.tables = self._fresh_tables()
        self._silence = [(i, r) for i, r in enumerate(self.rules) if not keeps_state(r)]
        # Silence rules hear a reading with online = 0 as the sensor going quiet.
        watched = {r.metric for r in self.rules if r.metric}
        self._metrics = sorted(watched | {ONLINE} if self._silence else watched)

    @classmethod
    def configured(
        cls, client: redis.Redis, settings: Settings, rules: Sequence[Rule]
    ) -> AlertEvaluator:
        """An evaluator for the streams and caps `settings` name."""
        keys, alert_keys = StreamKeys(settings.stream), AlertKeys(settings.alerts_stream)
        return cls(client, keys, alert_keys, rules, settings.alerts_maxlen)

    def _fresh_tables(self) -> Tables:
        if self.labels is None:
            return Tables(self.rules)
        self.labels.refresh_if_due()
        return Tables(self.rules, self.labels.of)

    def __call__(self, batch: Batch[ReadingColumns]) -> None:
        # Which rules select a sensor is worked out once per sensor; when labels change, again
        # for every sensor (the state itself is read back from Redis).
        relabelled = self.labels is not None and self.labels.refresh_if_due()
        if relabelled or len(self.tables.names) > SLOT_LIMIT:
            self.tables = self._fresh_tables()
        columns = self._columns(batch)
        while True:
            # What this worker holds may already be all the batch needs; the commit script
            # checks that no other batch was settled since (the version), as well as the gate.
            gate = SETTLE if self._holds_all(columns) else self._snapshot(batch, columns)
            if gate == OLDER_PENDING:
                self.stats.deferred += 1
                raise Deferred("older entries of the group are not settled yet")
            if gate == NOT_OURS:
                self._dropped(batch)
                return
            try:
                args = self._evaluate(batch, columns)
                with redis_errors():
                    result, version = COMMIT(self.client, args.keys, args.all_argv)
            except BaseException:
                # Evaluation changed the held state in place; only a settled batch makes it
                # Redis's.
                self.tables.forget()
                raise
            if result == 1:
                self.tables.version = int(version)
                self.stats.batches += 1
                self.stats.readings += len(batch.entries)
                self.stats.stale += args.stale
                self.stats.changes += len(args.decided)
                now = time.time()
                for record in args.decided:
                    ALERT_CHANGES.labels(record["rule"], record["state"]).inc()
                    ALERT_LATENCY.observe(max(0.0, now - entry_time_ms(record["reading"]) / 1000))
                    log.info("alert %s: %s %s (%s, %s)", record["state"], record["sensor_id"],
                             record["rule"], record["severity"], record["message"])  # fmt: skip
                return
            self.tables.forget()
            if result == 0:
                self._dropped(batch)
                return
            # Another worker settled a batch since the state was read (-2), or an older entry
            # is unsettled (-1): read again, through the gate.

    def _dropped(self, batch: Batch[ReadingColumns]) -> None:
        # Another consumer owns these entries now, or a re-sent call already settled them;
        # whatever this consumer still owns comes back through its pending list.
        self.stats.not_owned += 1
        log.info("batch of %d no longer ours; dropped", len(batch.entries))

    def _columns(self, batch: Batch[ReadingColumns]) -> _Columns:
        readings = batch.entries
        present = np.unique(readings.sensor)
        slot_of = np.zeros(len(readings.sensors), np.int64)
        slot_of[present] = [self.tables.slot(readings.sensors[c]) for c in present.tolist()]
        slots = slot_of[readings.sensor]
        # A row's round: how many readings of its sensor come before it in the batch.
        order = np.argsort(slots, kind="stable")
        ordered = slots[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        first_of_group = np.repeat(starts, np.diff(np.r_[starts, len(ordered)]))
        rounds = np.empty(len(slots), np.int64)
        rounds[order] = np.arange(len(slots)) - first_of_group
        return _Columns(
            slots,
            readings.ts_ms,
            readings.seq,
            rounds,
            {m: readings.metric(m) for m in self._metrics},
        )

    def _holds_all(self, columns: _Columns) -> bool:
        tables = self.tables
        return tables.version is not None and bool(tables.known[columns.slots].all())

    def _snapshot(self, batch: Batch[ReadingColumns], columns: _Columns) -> int:
        """Check the settlement's gate and bring the held state up to date for the batch, in
        one transaction."""
        tables = self.tables
        was_valid = tables.version is not None
        in_batch = np.unique(columns.slots)
        wanted = in_batch[~tables.known[in_batch]]
        names = tables.names
        gate = SettlingArgs(self.keys, batch, Gate.IN_ORDER)
        pipe = self.client.pipeline(transaction=True)
        pipe.evalsha(GATE.sha, len(gate.keys), *gate.keys, *gate.all_argv)
        pipe.get(self.alert_keys.version)
        wanted_names = [names[s] for s in wanted.tolist()]
        if wanted_names:
            pipe.hmget(self.alert_keys.clock, wanted_names)
            pipe.hmget(self.alert_keys.state, wanted_names)
        with redis_errors():
            replies = pipe.execute(raise_on_error=False)
            if isinstance(replies[0], redis.exceptions.NoScriptError):
                GATE.load(self.client)
                return self._snapshot(batch, columns)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        if replies[0] != SETTLE:
            return int(replies[0])
        version = int(replies[1] or 0)
        if version != tables.version:
            tables.forget()
            if was_valid:
                # Another worker settled batches since: read everything again.
                return self._snapshot(batch, columns)
            tables.version = version
        if wanted_names:
            tables.load(wanted, replies[2], replies[3])
        return SETTLE

    def _evaluate(self, batch: Batch[ReadingColumns], columns: _Columns) -> CommitArgs:
        tables = self.tables
        entries = batch.entries
        touched: list[Ints] = []
        changes: list[Change] = []
        stale_rows = np.zeros(len(entries), bool)
        order = np.argsort(columns.round, kind="stable")
        bounds = np.searchsorted(columns.round[order], np.arange(columns.round.max() + 2))
        for r in range(len(bounds) - 1):
            rows = order[bounds[r] : bounds[r + 1]]
            slots, ts, seq = columns.slots[rows], columns.ts[rows], columns.seq[rows]
            last, last_seq = tables.clock_ts[slots], tables.clock_seq[slots]
            stale = (ts < last) | ((ts == last) & (seq != NO_SEQ) & (seq == last_seq))
            stale_rows[rows] = stale
            live = ~stale
            tables.clock_ts[slots[live]] = ts[live]
            tables.clock_seq[slots[live]] = seq[live]
            for i in tables.stateful:
                rule = self.rules[i]
                values = columns.values[rule.metric or ""][rows]
                fed = live & tables.selects[i][slots] & ~np.isnan(values)
                records = tables.records[i]
                quiet = quiet_on_fresh(rule, values)
                if quiet is not None:
                    # A fresh state that the reading leaves fresh is not touched.
                    fed &= ~(quiet & is_fresh(records[slots]))
                if not fed.any():
                    continue
                fed_slots = slots[fed]
                state = records[fed_slots]
                decided = step(rule, state, ts[fed], values[fed])
                records[fed_slots] = state
                touched.append(fed_slots)
                changes += self._changes(i, rows[fed], decided, columns, entries, values[fed])
        stale = int(stale_rows.sum())
        changes.sort(key=lambda c: (c.position, c.rule_index))
        assert tables.version is not None
        args = CommitArgs(self.keys, self.alert_keys, batch, self.alerts_maxlen, tables.version)
        args.counts(len(entries) - stale, stale)
        args.clocks(
            {tables.names[s]: (int(tables.clock_ts[s]), int(tables.clock_seq[s]))
             for s in np.unique(columns.slots).tolist() if tables.clock_ts[s] != NO_CLOCK}
        )  # fmt: skip
        args.states(tables.dump(np.unique(np.concatenate(touched))) if touched else [])
        args.changes_section(changes)
        args.heard_section(self._heard(batch, columns))
        return args

    def _changes(self, rule_index: int, rows: Ints, decided: Decisions, columns: _Columns,
                 readings: ReadingColumns, values: npt.NDArray[np.float64]
                 ) -> list[Change]:  # fmt: skip
        rule = self.rules[rule_index]
        found = []
        for j in np.flatnonzero(decided.raised | decided.resolved).tolist():
            row = int(rows[j])
            sensor_id = readings.sensors[int(readings.sensor[row])]
            state = RAISED if decided.raised[j] else RESOLVED
            record = change_record(
                rule, sensor_id, readings.ids[row], int(columns.ts[row]), float(values[j]),
                state, float(decided.score[j]), int(decided.raised_ms[j]),
            )  # fmt: skip
            found.append(Change(row, rule_index, record))
        return found

    def _heard(self, batch: Batch[ReadingColumns], columns: _Columns) -> list[HeardBy]:
        """For each silence rule, the sensors of the batch it heard from (their last entry)."""
        found = []
        # Rules on the same metric (or on any reading) share the last row of each sensor.
        last_rows: dict[str, Ints] = {}
        heard_by_metric: dict[str, Heard] = {}
        for i, rule in self._silence:
            metric = rule.metric or ""
            rows = last_rows.get(metric)
            if rows is None:
                rows = last_rows[metric] = self._last_rows(columns, metric)
            selected = self.tables.selects[i][columns.slots[rows]]
            if selected.all():
                heard = heard_by_metric.get(metric)
                if heard is None:
                    heard = heard_by_metric[metric] = self._heard_from(batch, columns, rows)
            else:
                heard = self._heard_from(batch, columns, rows[selected])
            if heard.size:
                found.append(HeardBy(self.alert_keys.heard(rule.name), rule, heard))
        return found

    @staticmethod
    def _last_rows(columns: _Columns, metric: str) -> Ints:
        """The last row of each sensor in the batch (with a value for `metric`, if named)."""
        rows = np.arange(len(columns.slots))
        if metric:
            rows = rows[~np.isnan(columns.values[metric])]
        # The first of each sensor in the reversed order.
        _, last = np.unique(columns.slots[rows][::-1], return_index=True)
        return rows[::-1][last]

    def _heard_from(self, batch: Batch[ReadingColumns], columns: _Columns, rows: Ints) -> Heard:
        all_ids, names = batch.ids, self.tables.names
        ids = [all_ids[row] for row in rows.tolist()]
        offline = (columns.values[ONLINE][rows] == 0).tolist()
        # `=ms`: the sensor went offline at that time (see commit.lua).
        heard_ms = [f"={entry_time_ms(entry_id)}" if gone else str(entry_time_ms(entry_id))
                    for entry_id, gone in zip(ids, offline, strict=True)]  # fmt: skip
        return Heard(
            len(ids),
            ",".join([names[slot] for slot in columns.slots[rows].tolist()]),
            ",".join(heard_ms),
            ",".join(map(str, columns.ts[rows].tolist())),
            ",".join(ids),
        )
