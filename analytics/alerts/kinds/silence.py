"""Silence: no reading from a sensor for a while. The clock judges it (`analytics.alerts.silence`
sweeps), not readings, so it keeps no state per reading."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from analytics.alerts.kinds.base import Kind, RuleTable

if TYPE_CHECKING:
    from analytics.alerts.rules import Rule


class Silence(Kind):
    name = "silence"
    settings = frozenset({"after"})
    own_state: ClassVar[list[tuple[Any, ...]] | None] = None
    needs_metric = False

    def parse(self, table: RuleTable) -> dict[str, Any]:
        return {"after_ms": table.duration("after")}

    def limit_text(self, rule: Rule) -> str:
        return f"silent for {rule.after_ms // 1000}s"
