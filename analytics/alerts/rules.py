"""Alert rules from a TOML file, checked whole at start: a bad file names its line and reason.

```toml
[[rule]]
name = "too-hot"          # unique; alerts are kept per (sensor, rule)
type = "threshold"        # threshold | rate | anomaly | silence
sensors = "greenhouse-*"  # glob on sensor_id (default "*")
labels = "site=gh-*"      # and a label selector (device registry; default: any labels)
metric = "temp"           # silence: optional, any reading counts when absent
severity = "critical"     # info | warning | critical (default warning)
above = 40.0              # or below = ...
clear = 38.0              # resolve only once back past this level (default: the level)
for = "30s"               # only after the condition held this long (default: at once)
cooldown = "5m"           # no new alert this soon after the last one resolved
```
Rate: `faster_than` (units per second, compared with the change over `window`), optional
`direction` (rising | falling | either) and `clear`. Anomaly: `z` (fire when |z| exceeds it,
against the sensor's own time-weighted mean and deviation, where a reading after a gap of
`window` weighs a half), optional `clear`, `min_samples`. Silence: `after` (a duration); a
reading with `online` = 0 (a Sparkplug B death, see producers/profiles/sparkplug) makes the
sensor silent at once.
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analytics.alerts.kinds import KINDS
from ingest.contract.reading import METRIC_NAME, RESERVED
from ingest.durations import parse_duration_ms
from ingest.errors import SettingsError
from ingest.labels import Selector, parse_selector

SEVERITIES = ("info", "warning", "critical")
RULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_COMMON = frozenset({"name", "type", "sensors", "labels", "metric", "severity", "cooldown"})


class RulesError(SettingsError):
    """A rules file that cannot be used; the message gives the file, the line and the reason."""


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    sensors: str
    metric: str | None
    severity: str
    cooldown_ms: int
    # threshold: `level` is `above` or `below`; `rising` says which.
    # rate: `level` is units per second; anomaly: `level` is the |z| that fires.
    level: float = math.nan
    clear: float = math.nan
    rising: bool = True
    for_ms: int = 0
    direction: str = "either"
    window_ms: int = 0
    min_samples: int = 0
    # silence
    after_ms: int = 0
    # Label selector (`site=gh-*`) the sensor's labels in the device registry must match.
    labels: Selector = field(default_factory=Selector)

    def selects(self, sensor_id: str, labels: Mapping[str, str]) -> bool:
        return fnmatch.fnmatchcase(sensor_id, self.sensors) and self.labels.matches(labels)

    @property
    def limit_text(self) -> str:
        return KINDS[self.kind].limit_text(self)


def load_rules(path: str | Path) -> list[Rule]:
    """Read and check a rules file; RulesError names the line that is wrong and why."""
    text, source = read_rules_file(path)
    return parse_rules(text, source)


def read_rules_file(path: str | Path) -> tuple[str, str]:
    """The text of a rules file and the name its errors give it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from None


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    return rules_of(parse_toml(text, source), text, source)


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(document) - {"rule", "notify"}
    if unknown:
        raise RulesError(f"{source}:1: unknown top-level key {sorted(unknown)[0]!r}; rules go "
                         "in [[rule]] tables, notification targets in [[notify]]")  # fmt: skip
    return document


def rules_of(document: dict[str, Any], text: str, source: str) -> list[Rule]:
    """The `[[rule]]` tables of a parsed rules file, checked."""
    tables = document.get("rule", [])
    if not isinstance(tables, list) or not tables:
        raise RulesError(f"{source}:1: no [[rule]] tables; nothing to evaluate")
    starts = table_starts(text, "rule")
    rules: list[Rule] = []
    for index, table in enumerate(tables):
        reader = TableReader(table, source, text, starts[index] if index < len(starts) else 1)
        rule = _rule(reader)
        if any(r.name == rule.name for r in rules):
            raise RulesError(reader.at("name", f"rule name {rule.name!r} is used twice"))
        rules.append(rule)
    return rules


def table_starts(text: str, name: str) -> list[int]:
    """The line numbers where each `[[name]]` table begins."""
    header = f"[[{name}]]"
    return [
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip().replace(" ", "").startswith(header)
    ]


class TableReader:
    """One table of a rules file read key by key (see `kinds.base.RuleTable`); a problem comes
    out as `file:line: reason`."""

    def __init__(self, table: Mapping[str, Any], source: str, text: str, start: int) -> None:
        self.table = table
        self.source, self.start = source, start
        self.lines = text.splitlines()

    def at(self, key: str | None, reason: str) -> str:
        line = self.start
        if key is not None:
            for number in range(self.start, len(self.lines)):
                stripped = self.lines[number].strip()
                if stripped.startswith("["):
                    break
                if re.match(rf'"?{re.escape(key)}"?\s*=', stripped):
                    line = number + 1
                    break
        return f"{self.source}:{line}: {reason}"

    def fail(self, key: str | None, reason: str) -> RulesError:
        return RulesError(self.at(key, reason))

    def has(self, key: str) -> bool:
        return key in self.table

    def text(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"{key} must be a string" if key in self.table else
                            f"{key} is missing")  # fmt: skip
        return value

    def texts(self, key: str, default: list[str], most: int) -> list[str]:
        value = self.table.get(key, default)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f'{key} must be a list of strings such as ["a", "b"]')
        if len(value) > most:
            raise self.fail(key, f"{key} has at most {most} items, got {len(value)}")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(None, f"{key} is missing")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.fail(key, f"{key} must be a finite number, got {value!r}")
        return float(value)

    def duration(self, key: str, default: str | None = None) -> int:
        value = self.text(key, default)
        if value == "0s":
            return 0
        try:
            return parse_duration_ms(value)
        except ValueError as exc:
            raise self.fail(key, f"{key}: {exc}") from None


def _rule(table: TableReader) -> Rule:
    raw = table.table
    kind_name = raw.get("type")
    kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise table.fail("type", f"type must be one of {', '.join(KINDS)}, got {kind_name!r}")
    for key in raw:
        if key not in _COMMON | kind.settings:
            raise table.fail(key, f"{key!r} is not a setting of a {kind.name} rule")
    name = table.text("name")
    if RULE_NAME.fullmatch(name) is None:
        raise table.fail("name", f"name must be 1-64 chars of A-Z a-z 0-9 _ . -, got {name!r}")
    metric = raw.get("metric")
    if metric is None and kind.needs_metric:
        raise table.fail(None, f"metric is missing (a {kind.name} rule watches one metric)")
    if metric is not None and (
        not isinstance(metric, str)
        or not METRIC_NAME.fullmatch(metric)
        or metric in RESERVED
        or metric.startswith("_")
    ):
        raise table.fail("metric", f"metric must be a metric name such as temp, got {metric!r}")
    severity = table.text("severity", "warning")
    if severity not in SEVERITIES:
        raise table.fail("severity", f"severity must be one of {', '.join(SEVERITIES)}")
    try:
        labels = parse_selector(table.text("labels", ""))
    except ValueError as exc:
        raise table.fail("labels", str(exc)) from None
    return Rule(
        name=name,
        kind=kind.name,
        sensors=table.text("sensors", "*"),
        labels=labels,
        metric=metric,
        severity=severity,
        cooldown_ms=table.duration("cooldown", "0s"),
        **kind.parse(table),
    )
