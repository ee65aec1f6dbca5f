"""The life of one alert per (sensor, rule), computed for many sensors at once with numpy.

A round holds at most one reading per sensor, so each sensor's readings still go through its
rule one at a time, in order. Every rule kind (`kinds`) reduces a reading to "is this bad?" and
"is this recovered?"; the lifecycle is shared: raise when bad (after `for`, outside the
cooldown), resolve when recovered. Only exact IEEE arithmetic is used (+ - * / sqrt max), so a
sensor's numbers are the same bits however its readings were split into batches and rounds.

State is a fixed-size little-endian record per (sensor, rule), kept as is in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analytics.alerts.kinds import KINDS
from analytics.alerts.kinds.base import NEVER, Bools, Floats, Ints, Judgement, Records
from analytics.alerts.rules import Rule


def dtype_of(kind: str) -> np.dtype[np.void]:
    """The state record of a kind that keeps one."""
    state = KINDS[kind].state
    if state is None:
        raise ValueError(f"{kind} rules keep no state per reading")
    return state


def keeps_state(rule: Rule) -> bool:
    return KINDS[rule.kind].state is not None


def fresh(kind: str, n: int) -> Records:
    """States that carry nothing yet."""
    records = np.zeros(n, dtype_of(kind))
    for name in ("open", "pending", "quiet"):
        records[name] = NEVER
    return records


def is_fresh(records: Records) -> Bools:
    """States whose lifecycle fields equal a fresh one's."""
    untouched: Bools = records["open"] == NEVER
    untouched &= records["pending"] == NEVER
    untouched &= records["quiet"] == NEVER
    return untouched


@dataclass
class Decisions:
    """What a round decided, one row per reading fed: raised, resolved, and the numbers."""

    raised: Bools
    resolved: Bools
    score: Floats
    # When the resolved alert was raised.
    raised_ms: Ints


def quiet_on_fresh(rule: Rule, values: Floats) -> Bools | None:
    """Readings that leave a fresh state fresh (None: the kind cannot tell without its state)."""
    return KINDS[rule.kind].quiet_on_fresh(rule, values)


def step(rule: Rule, records: Records, ts: Ints, values: Floats) -> Decisions:
    """Feed one reading to each of these states (one row per sensor); they change in place."""
    return _lifecycle(rule, records, ts, KINDS[rule.kind].judge(rule, records, ts, values))


def _lifecycle(rule: Rule, records: Records, ts: Ints, judged: Judgement) -> Decisions:
    """Raise and resolve; rows not judged (no score yet) change nothing."""
    opened = records["open"]
    pending = records["pending"]
    quiet = records["quiet"]
    is_open = opened != NEVER
    resolved = judged.judged & is_open & judged.recovered
    raised_ms = np.where(resolved, opened, NEVER)
    idle = judged.judged & ~is_open & ~judged.bad
    starting = judged.judged & ~is_open & judged.bad
    pending = np.where(idle | resolved, NEVER, pending)
    pending = np.where(starting & (pending == NEVER), ts, pending)
    raised = starting & (ts - pending >= rule.for_ms) & (ts >= quiet)
    quiet = np.where(idle & (ts >= quiet), NEVER, quiet)
    if rule.cooldown_ms:
        quiet = np.where(resolved, ts + rule.cooldown_ms, quiet)
    quiet = np.where(raised, NEVER, quiet)
    records["open"] = np.where(raised, ts, np.where(resolved, NEVER, opened))
    records["pending"] = np.where(raised, NEVER, pending)
    records["quiet"] = quiet
    return Decisions(raised, resolved, judged.score, raised_ms)
