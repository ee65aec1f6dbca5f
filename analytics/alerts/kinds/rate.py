"""Rate of change: units per second against a reading about a window ago."""

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

# A rate rule remembers a few readings per window, evenly spaced, so its state stays small at any
# reading rate; the change is measured against the oldest, 3/4 to 4/4 of a window ago.
ANCHORS = 4
DIRECTIONS = ("rising", "falling", "either")


class Rate(Kind):
    name = "rate"
    settings = frozenset({"faster_than", "window", "direction", "clear"})
    own_state: ClassVar[list[tuple[Any, ...]] | None] = [
        ("count", "<i8"),
        ("t", "<i8", (ANCHORS + 1,)),
        ("v", "<f8", (ANCHORS + 1,)),
    ]

    def parse(self, table: RuleTable) -> dict[str, Any]:
        level, clear = level_and_clear(table, "faster_than")
        direction = table.text("direction", "either")
        if direction not in DIRECTIONS:
            raise table.fail("direction", f"direction must be one of {', '.join(DIRECTIONS)}")
        return {"level": level, "clear": clear, "direction": direction,
                "window_ms": table.duration("window", "60s")}  # fmt: skip

    def limit_text(self, rule: Rule) -> str:
        return f"|rate| > {rule.level:g}/s over {rule.window_ms // 1000}s"

    def judge(self, rule: Rule, records: Records, ts: Ints, values: Floats) -> Judgement:
        rate, known = _rate(rule, records, ts, values)
        if rule.direction == "rising":
            bad, recovered = rate > rule.level, rate <= rule.clear
        elif rule.direction == "falling":
            bad, recovered = rate < -rule.level, rate >= -rule.clear
        else:
            bad, recovered = np.abs(rate) > rule.level, np.abs(rate) <= rule.clear
        return Judgement(rate, bad, recovered, known)


def _rate(rule: Rule, records: Records, ts: Ints, values: Floats) -> tuple[Floats, Bools]:
    """Units per second between each reading and the oldest remembered one within the window;
    known only once the remembered history spans half a window."""
    window = rule.window_ms
    t, v, count = records["t"], records["v"], records["count"]
    slots = np.arange(ANCHORS + 1)
    filled = slots[None, :] < count[:, None]
    # Forget anchors older than the window (they are the first ones).
    old = (filled & (t < (ts - window)[:, None])).sum(axis=1)
    take = np.minimum(slots[None, :] + old[:, None], ANCHORS)
    t = np.take_along_axis(t, take, axis=1)
    v = np.take_along_axis(v, take, axis=1)
    count = count - old
    rows = np.arange(len(ts))
    known = (count > 0) & (ts - t[:, 0] >= window / 2)
    elapsed = np.where(known, ts - t[:, 0], 1)
    rate = np.where(known, (values - v[:, 0]) * 1000.0 / elapsed, 0.0)
    newest = np.where(count > 0, t[rows, np.maximum(count - 1, 0)], 0)
    append = (count == 0) | (ts - newest >= window / ANCHORS)
    # A full memory drops its oldest to make room.
    full = append & (count == ANCHORS + 1)
    t[full] = np.roll(t[full], -1, axis=1)
    v[full] = np.roll(v[full], -1, axis=1)
    count = np.where(full, count - 1, count)
    at = np.minimum(count, ANCHORS)
    t[rows[append], at[append]] = ts[append]
    v[rows[append], at[append]] = values[append]
    records["t"], records["v"] = t, v
    records["count"] = count + append
    return rate, known
