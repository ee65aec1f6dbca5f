"""What every alert rule kind provides, and the lifecycle they share.

A kind reads its settings from a rule's [[rule]] table, says how its limit reads in an alert,
and (unless the clock judges it, as silence) turns each reading into a score and two verdicts:
is this bad, has it recovered. The shared lifecycle raises when bad (after `for`, outside the
cooldown) and resolves when recovered; a kind's state is the lifecycle's fields and its own, one
fixed-size little-endian record per (sensor, rule), kept as is in Redis.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from analytics.alerts.rules import Rule

NEVER = -1
LIFE = [("open", "<i8"), ("pending", "<i8"), ("quiet", "<i8")]

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Records = npt.NDArray[np.void]


class RuleTable(Protocol):
    """One [[rule]] table of a rules file, read key by key; each method raises RulesError naming
    the line when the value is missing or wrong."""

    def has(self, key: str) -> bool: ...

    def text(self, key: str, default: str | None = None) -> str: ...

    def number(self, key: str, default: float | None = None) -> float: ...

    def duration(self, key: str, default: str | None = None) -> int: ...

    def fail(self, key: str | None, reason: str) -> Exception: ...


@dataclass
class Judgement:
    """A kind's verdict on one reading per row: its score, whether it is bad, whether it has
    recovered, and whether it was judged at all (no score yet: nothing changes)."""

    score: Floats
    bad: Bools
    recovered: Bools
    judged: Bools


class Kind(ABC):
    name: str
    # The keys its [[rule]] tables may hold besides the common ones.
    settings: frozenset[str]
    # Its own fields after the lifecycle's; None for a kind the clock judges (no state).
    own_state: ClassVar[list[tuple[Any, ...]] | None] = []
    # Whether it needs a `metric` (silence watches a sensor, not a metric).
    needs_metric = True

    @property
    def state(self) -> np.dtype[np.void] | None:
        return None if self.own_state is None else np.dtype([*LIFE, *self.own_state])

    @abstractmethod
    def parse(self, table: RuleTable) -> dict[str, Any]:
        """The Rule fields this kind's settings give."""

    @abstractmethod
    def limit_text(self, rule: Rule) -> str:
        """The limit as an alert states it."""

    def judge(self, rule: Rule, records: Records, ts: Ints, values: Floats) -> Judgement:
        """Score one reading per row of states, updating the kind's own fields in place."""
        raise ValueError(f"rule {rule.name}: {self.name} rules are judged by the clock")

    def quiet_on_fresh(self, rule: Rule, values: Floats) -> Bools | None:
        """Readings that leave a fresh state fresh, so the common case needs no state; None
        when the kind cannot tell without its state."""
        return None


def level_and_clear(table: RuleTable, key: str) -> tuple[float, float]:
    """A limit above 0, and a clear level between 0 and it (default: the limit)."""
    level = table.number(key)
    if level <= 0:
        raise table.fail(key, f"{key} must be above 0")
    clear = table.number("clear", level)
    if not 0 <= clear <= level:
        raise table.fail("clear", f"clear must be between 0 and {key} ({level:g})")
    return level, clear
