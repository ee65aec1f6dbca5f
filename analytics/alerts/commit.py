"""What the alerts group's commit script is given: its KEYS and ARGV for one batch, and the alert
records it writes (a change decided by a reading, a silence rule's part of its records)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from analytics.alerts.rules import Rule
from ingest.contract.columns import NO_SEQ, ReadingColumns
from ingest.groups import Batch
from ingest.groups.settlement import Gate, SettlingArgs
from ingest.keys import SETTLED, AlertKeys, StreamKeys

RAISED, RESOLVED = "raised", "resolved"


def open_field(sensor_id: str, rule: str) -> str:
    return f"{sensor_id}|{rule}"


@dataclass(frozen=True)
class Change:
    """One alert change a batch decided, in the order of the readings that decided them."""

    position: int
    rule_index: int
    record: dict[str, str]


def change_record(
    rule: Rule, sensor_id: str, entry_id: str, ts_ms: int, value: float, state: str,
    score: float, raised_ms: int,
) -> dict[str, str]:  # fmt: skip
    """The fields of one alert change as it appears on the alerts stream."""
    limit = rule.level if state == RAISED else rule.clear
    if state == RAISED:
        message = f"{rule.metric} {rule.limit_text} (got {score:.4g})"
    else:
        message = f"{rule.metric} back past {limit:g} (got {score:.4g})"
    record = {
        "sensor_id": sensor_id,
        "rule": rule.name,
        "kind": rule.kind,
        "severity": rule.severity,
        "metric": rule.metric or "",
        "state": state,
        "ts": str(ts_ms),
        "value": repr(value),
        "score": repr(score),
        "limit": repr(limit),
        "reading": entry_id,
        "message": message,
    }
    if state != RAISED:
        record["raised_ts"] = str(raised_ms)
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


class Heard(NamedTuple):
    """Sensors a silence rule heard from, packed for the commit script: their ids, the stream
    times and event times of their last entries, and those entries' IDs."""

    size: int
    sensors: str
    heard_ms: str
    ts: str
    entry_ids: str


class HeardBy(NamedTuple):
    """A silence rule, the key of its heard set, and whom it heard from."""

    key: str
    rule: Rule
    heard: Heard


class CommitArgs(SettlingArgs):
    """KEYS and ARGV for one call of the commit script; lists packed one argument each."""

    def __init__(self, keys: StreamKeys, alert_keys: AlertKeys, batch: Batch[ReadingColumns],
                 alerts_maxlen: int, version: int) -> None:  # fmt: skip
        super().__init__(
            keys, batch, Gate.IN_ORDER,
            [alert_keys.stream, alert_keys.open, alert_keys.clock, alert_keys.version,
             alert_keys.state],
        )  # fmt: skip
        self.argv += [alerts_maxlen, version]
        # The changes the batch decided (silence resolutions are the script's own), and how
        # many of its readings were stale.
        self.decided: list[dict[str, str]] = []
        self.stale = 0

    def counts(self, evaluated: int, stale: int) -> None:
        self.stale = stale
        self.ledger([(f"{SETTLED}evaluated", evaluated), (f"{SETTLED}stale", stale)])

    def clocks(self, clocks: Mapping[str, tuple[int, int]]) -> None:
        self.argv += [
            len(clocks),
            ",".join(clocks),
            ",".join(f"{ts}:{'' if seq == NO_SEQ else seq}" for ts, seq in clocks.values()),
        ]

    def states(self, dumped: Iterable[tuple[int, list[str], bytes]]) -> None:
        """Sensors' records, packed per layout: value size, sensor ids, values concatenated."""
        groups = list(dumped)
        self.argv.append(len(groups))
        for size, names, values in groups:
            self.argv += [size, len(names), ",".join(names), values]

    def changes_section(self, changes: Sequence[Change]) -> None:
        self.decided = [change.record for change in changes]
        self.argv.append(len(changes))
        for change in changes:
            record = change.record
            field = open_field(record["sensor_id"], record["rule"])
            self.argv += [field, record["state"], json.dumps(record)]
            self._fields(record)

    def heard_section(self, heard: Iterable[HeardBy]) -> None:
        rows = list(heard)
        self.argv.append(len(rows))
        for key, rule, sensors in rows:
            self.argv += [self.key(key), rule.name, rule.after_ms]
            self._fields(silence_template(rule) | {"message": "heard from again"})
            self.argv += [sensors.size, sensors.sensors, sensors.heard_ms, sensors.ts,
                          sensors.entry_ids]  # fmt: skip

    def _fields(self, record: Mapping[str, str]) -> None:
        self.argv.append(len(record))
        for name, value in record.items():
            self.argv += [name, value]
