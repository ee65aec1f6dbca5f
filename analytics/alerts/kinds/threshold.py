"""`temp > 40 for 30s`, cleared at or below `clear` (hysteresis)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from analytics.alerts.kinds.base import Bools, Floats, Ints, Judgement, Kind, Records, RuleTable

if TYPE_CHECKING:
    from analytics.alerts.rules import Rule


class Threshold(Kind):
    name = "threshold"
    settings = frozenset({"above", "below", "clear", "for"})

    def parse(self, table: RuleTable) -> dict[str, Any]:
        if table.has("above") == table.has("below"):
            raise table.fail(None, "a threshold rule needs exactly one of above or below")
        rising = table.has("above")
        level = table.number("above" if rising else "below")
        clear = table.number("clear", level)
        if (rising and clear > level) or (not rising and clear < level):
            side = "at or below above" if rising else "at or above below"
            raise table.fail("clear", f"clear must be {side} ({level:g}), got {clear:g}")
        return {"level": level, "clear": clear, "rising": rising,
                "for_ms": table.duration("for", "0s")}  # fmt: skip

    def limit_text(self, rule: Rule) -> str:
        return f"{'>' if rule.rising else '<'} {rule.level:g}"

    def judge(self, rule: Rule, records: Records, ts: Ints, values: Floats) -> Judgement:
        bad = values > rule.level if rule.rising else values < rule.level
        recovered = values <= rule.clear if rule.rising else values >= rule.clear
        return Judgement(values, bad, recovered, np.ones(len(ts), bool))

    def quiet_on_fresh(self, rule: Rule, values: Floats) -> Bools:
        quiet: Bools = ~(values > rule.level) if rule.rising else ~(values < rule.level)
        return quiet
