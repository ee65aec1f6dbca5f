"""Statistical anomaly: a reading's z-score against the sensor's time-weighted history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from analytics.alerts.kinds.base import (
    Bools,
    Floats,
    Ints,
    Judgement,
    Kind,
    Records,
    RuleTable,
    level_and_clear,
)

if TYPE_CHECKING:
    from analytics.alerts.rules import Rule

# Below this deviation the history counts as flat, so z stays finite.
MIN_DEVIATION = 1e-12
MAX_SAMPLES = 1 << 30


class Anomaly(Kind):
    name = "anomaly"
    settings = frozenset({"z", "window", "clear", "min_samples"})
    own_state: ClassVar[list[tuple[Any, ...]] | None] = [
        ("mean", "<f8"),
        ("var", "<f8"),
        ("samples", "<i8"),
        ("last", "<i8"),
    ]

    def parse(self, table: RuleTable) -> dict[str, Any]:
        level, clear = level_and_clear(table, "z")
        samples = table.number("min_samples", 30)
        if samples < 2 or samples != int(samples):
            raise table.fail("min_samples", "min_samples must be a whole number of at least 2")
        return {"level": level, "clear": clear, "window_ms": table.duration("window", "10m"),
                "min_samples": int(samples)}  # fmt: skip

    def limit_text(self, rule: Rule) -> str:
        return f"|z| > {rule.level:g}"

    def judge(self, rule: Rule, records: Records, ts: Ints, values: Floats) -> Judgement:
        z, known = _z_then_learn(rule, records, ts, values)
        return Judgement(z, np.abs(z) > rule.level, np.abs(z) <= rule.clear, known)


def _z_then_learn(rule: Rule, records: Records, ts: Ints, values: Floats) -> tuple[Floats, Bools]:
    """Each reading's z-score against what came before it (known once `min_samples` are in),
    then the reading joins the weighted mean and variance: a plain average while few samples
    are in, time-weighted after, where a reading after a gap of one window weighs a half."""
    mean, var, samples, last = records["mean"], records["var"], records["samples"], records["last"]
    known = samples >= rule.min_samples
    deviation = np.maximum(np.sqrt(var), MIN_DEVIATION)
    z = np.where(known, (values - mean) / deviation, 0.0)
    first = samples == 0
    elapsed = np.maximum(ts - last, 0).astype(np.float64)
    alpha = np.maximum(elapsed / (rule.window_ms + elapsed), 1.0 / (samples + 1))
    diff = values - mean
    increment = alpha * diff
    records["mean"] = np.where(first, values, mean + increment)
    records["var"] = np.where(first, 0.0, (1.0 - alpha) * (var + diff * increment))
    records["samples"] = np.minimum(samples + 1, MAX_SAMPLES)
    records["last"] = ts
    return z, known
