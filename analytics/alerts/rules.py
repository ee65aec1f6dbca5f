"""Alert rules from a TOML file, checked whole at start: a bad file names its line and reason.

```toml
[[rule]]
name = "too-hot"          # unique; alerts are kept per (sensor, rule)
type = "threshold"        # threshold | rate | anomaly | silence
sensors = "greenhouse-*"  # glob on sensor_id (default "*")
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
`window` weighs a half), optional `clear`, `min_samples`. Silence: `after` (a duration).
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.contract.reading import METRIC_NAME, RESERVED
from ingest.durations import parse_duration_ms
from ingest.errors import SettingsError

KINDS = ("threshold", "rate", "anomaly", "silence")
SEVERITIES = ("info", "warning", "critical")
DIRECTIONS = ("rising", "falling", "either")
RULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_COMMON = {"name", "type", "sensors", "metric", "severity", "cooldown"}
_ALLOWED = {
    "threshold": _COMMON | {"above", "below", "clear", "for"},
    "rate": _COMMON | {"faster_than", "window", "direction", "clear"},
    "anomaly": _COMMON | {"z", "window", "clear", "min_samples"},
    "silence": _COMMON | {"after"},
}


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

    def selects(self, sensor_id: str) -> bool:
        return fnmatch.fnmatchcase(sensor_id, self.sensors)

    @property
    def limit_text(self) -> str:
        if self.kind == "threshold":
            return f"{'>' if self.rising else '<'} {self.level:g}"
        if self.kind == "rate":
            return f"|rate| > {self.level:g}/s over {self.window_ms // 1000}s"
        if self.kind == "anomaly":
            return f"|z| > {self.level:g}"
        return f"silent for {self.after_ms // 1000}s"


def load_rules(path: str | Path) -> list[Rule]:
    """Read and check a rules file; RulesError names the line that is wrong and why."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(document) - {"rule"}
    if unknown:
        raise RulesError(f"{source}:1: unknown top-level key {sorted(unknown)[0]!r}; rules go "
                         "in [[rule]] tables")  # fmt: skip
    tables = document.get("rule", [])
    if not isinstance(tables, list) or not tables:
        raise RulesError(f"{source}:1: no [[rule]] tables; nothing to evaluate")
    starts = _table_lines(text)
    rules: list[Rule] = []
    for index, table in enumerate(tables):
        locate = _Locator(source, text, starts[index] if index < len(starts) else 1)
        rule = _rule(table, locate)
        if any(r.name == rule.name for r in rules):
            raise RulesError(locate.at("name", f"rule name {rule.name!r} is used twice"))
        rules.append(rule)
    return rules


def _table_lines(text: str) -> list[int]:
    return [
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip().replace(" ", "").startswith("[[rule]]")
    ]


class _Locator:
    """Turns a key of one [[rule]] table into `file:line: reason`."""

    def __init__(self, source: str, text: str, start: int) -> None:
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


def _rule(table: Mapping[str, Any], locate: _Locator) -> Rule:
    def fail(key: str | None, reason: str) -> RulesError:
        return RulesError(locate.at(key, reason))

    kind = table.get("type")
    if kind not in KINDS:
        raise fail("type", f"type must be one of {', '.join(KINDS)}, got {kind!r}")
    for key in table:
        if key not in _ALLOWED[kind]:
            raise fail(key, f"{key!r} is not a setting of a {kind} rule")

    def text(key: str, default: str | None = None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            raise fail(key, f"{key} must be a string" if key in table else f"{key} is missing")
        return value

    def number(key: str, default: float | None = None) -> float:
        value = table.get(key, default)
        if value is None:
            raise fail(None, f"{key} is missing")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise fail(key, f"{key} must be a finite number, got {value!r}")
        return float(value)

    def duration(key: str, default: str | None = None) -> int:
        value = text(key, default)
        if value == "0s":
            return 0
        try:
            return parse_duration_ms(value)
        except ValueError as exc:
            raise fail(key, f"{key}: {exc}") from None

    name = text("name")
    if RULE_NAME.fullmatch(name) is None:
        raise fail("name", f"name must be 1-64 chars of A-Z a-z 0-9 _ . -, got {name!r}")
    metric = table.get("metric")
    if metric is None and kind != "silence":
        raise fail(None, f"metric is missing (a {kind} rule watches one metric)")
    if metric is not None and (
        not isinstance(metric, str)
        or not METRIC_NAME.fullmatch(metric)
        or metric in RESERVED
        or metric.startswith("_")
    ):
        raise fail("metric", f"metric must be a metric name such as temp, got {metric!r}")
    severity = text("severity", "warning")
    if severity not in SEVERITIES:
        raise fail("severity", f"severity must be one of {', '.join(SEVERITIES)}")
    common: dict[str, Any] = dict(
        name=name,
        kind=kind,
        sensors=text("sensors", "*"),
        metric=metric,
        severity=severity,
        cooldown_ms=duration("cooldown", "0s"),
    )
    if kind == "threshold":
        if ("above" in table) == ("below" in table):
            raise fail(None, "a threshold rule needs exactly one of above or below")
        rising = "above" in table
        level = number("above" if rising else "below")
        clear = number("clear", level)
        if (rising and clear > level) or (not rising and clear < level):
            side = "at or below above" if rising else "at or above below"
            raise fail("clear", f"clear must be {side} ({level:g}), got {clear:g}")
        return Rule(**common, level=level, clear=clear, rising=rising, for_ms=duration("for", "0s"))

    def level_and_clear(key: str) -> tuple[float, float]:
        """A limit above 0, and a clear level between 0 and it (default: the limit)."""
        level = number(key)
        if level <= 0:
            raise fail(key, f"{key} must be above 0")
        clear = number("clear", level)
        if not 0 <= clear <= level:
            raise fail("clear", f"clear must be between 0 and {key} ({level:g})")
        return level, clear

    if kind == "rate":
        level, clear = level_and_clear("faster_than")
        direction = text("direction", "either")
        if direction not in DIRECTIONS:
            raise fail("direction", f"direction must be one of {', '.join(DIRECTIONS)}")
        return Rule(**common, level=level, clear=clear, direction=direction,
                    window_ms=duration("window", "60s"))  # fmt: skip
    if kind == "anomaly":
        level, clear = level_and_clear("z")
        samples = number("min_samples", 30)
        if samples < 2 or samples != int(samples):
            raise fail("min_samples", "min_samples must be a whole number of at least 2")
        return Rule(**common, level=level, clear=clear, window_ms=duration("window", "10m"),
                    min_samples=int(samples))  # fmt: skip
    return Rule(**common, after_ms=duration("after"))
