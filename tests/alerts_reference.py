"""A reference for the alert kernels: the same rules, one reading at a time, in plain Python.

Written for clarity, not speed: tests feed both the same readings and expect the same decisions
and the same state, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from analytics.alerts.kinds.anomaly import MAX_SAMPLES, MIN_DEVIATION
from analytics.alerts.kinds.base import NEVER
from analytics.alerts.kinds.rate import ANCHORS as RATE_ANCHORS
from analytics.alerts.rules import Rule

RAISED = "raised"
RESOLVED = "resolved"


@dataclass
class RuleState:
    open_since_ms: int = NEVER
    pending_since_ms: int = NEVER
    quiet_until_ms: int = NEVER
    # anomaly: exponentially weighted mean and variance of the sensor's own values
    mean: float = 0.0
    var: float = 0.0
    samples: int = 0
    last_ms: int = NEVER
    # rate: (ts_ms, value), oldest first
    anchors: list[tuple[int, float]] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.open_since_ms != NEVER


@dataclass(frozen=True)
class Decision:
    """What a reading decided: raise or resolve, with the number compared and the limit."""

    state: str
    score: float
    limit: float
    raised_ms: int


def step(rule: Rule, state: RuleState, ts_ms: int, value: float) -> Decision | None:
    """Feed one reading (in event-time order) to a rule; the state changes in place."""
    if rule.kind == "threshold":
        bad = value > rule.level if rule.rising else value < rule.level
        recovered = value <= rule.clear if rule.rising else value >= rule.clear
        return _lifecycle(rule, state, ts_ms, value, bad, recovered)
    if rule.kind == "rate":
        rate = _rate(rule, state, ts_ms, value)
        if rate is None:
            return None
        if rule.direction == "rising":
            bad, recovered = rate > rule.level, rate <= rule.clear
        elif rule.direction == "falling":
            bad, recovered = rate < -rule.level, rate >= -rule.clear
        else:
            bad, recovered = abs(rate) > rule.level, abs(rate) <= rule.clear
        return _lifecycle(rule, state, ts_ms, rate, bad, recovered)
    if rule.kind == "anomaly":
        z = _z_then_learn(rule, state, ts_ms, value)
        if z is None:
            return None
        return _lifecycle(rule, state, ts_ms, z, abs(z) > rule.level, abs(z) <= rule.clear)
    raise ValueError(f"rule {rule.name}: {rule.kind} rules are judged by the clock, not readings")


def _lifecycle(
    rule: Rule, state: RuleState, ts_ms: int, score: float, bad: bool, recovered: bool
) -> Decision | None:
    if state.is_open:
        if not recovered:
            return None
        raised_ms = state.open_since_ms
        state.open_since_ms = NEVER
        state.pending_since_ms = NEVER
        if rule.cooldown_ms:
            state.quiet_until_ms = ts_ms + rule.cooldown_ms
        return Decision(RESOLVED, score, rule.clear, raised_ms)
    if not bad:
        state.pending_since_ms = NEVER
        if ts_ms >= state.quiet_until_ms:
            state.quiet_until_ms = NEVER
        return None
    if state.pending_since_ms == NEVER:
        state.pending_since_ms = ts_ms
    if ts_ms - state.pending_since_ms < rule.for_ms or ts_ms < state.quiet_until_ms:
        return None
    state.open_since_ms = ts_ms
    state.pending_since_ms = NEVER
    state.quiet_until_ms = NEVER
    return Decision(RAISED, score, rule.level, ts_ms)


def _rate(rule: Rule, state: RuleState, ts_ms: int, value: float) -> float | None:
    """Units per second between this reading and the oldest remembered one within the window;
    None until the remembered history spans half a window."""
    window = rule.window_ms
    anchors = state.anchors
    while anchors and anchors[0][0] < ts_ms - window:
        anchors.pop(0)
    rate = None
    if anchors and ts_ms - anchors[0][0] >= window / 2:
        then_ms, then = anchors[0]
        rate = (value - then) * 1000.0 / (ts_ms - then_ms)
    if not anchors or ts_ms - anchors[-1][0] >= window / RATE_ANCHORS:
        if len(anchors) == RATE_ANCHORS + 1:
            anchors.pop(0)
        anchors.append((ts_ms, value))
    return rate


def _z_then_learn(rule: Rule, state: RuleState, ts_ms: int, value: float) -> float | None:
    """The reading's z-score against what came before it (None while learning), then the
    reading joins the weighted mean and variance."""
    z = None
    if state.samples >= rule.min_samples:
        deviation = max(math.sqrt(state.var), MIN_DEVIATION)
        z = (value - state.mean) / deviation
    if state.samples == 0:
        state.mean, state.var = value, 0.0
    else:
        elapsed = max(ts_ms - state.last_ms, 0)
        # A plain average while few samples are in, time-weighted after: a reading after a gap
        # of one window weighs a half. Plain arithmetic, so every platform gets the same bits.
        alpha = max(elapsed / (rule.window_ms + elapsed), 1.0 / (state.samples + 1))
        diff = value - state.mean
        increment = alpha * diff
        state.mean += increment
        state.var = (1.0 - alpha) * (state.var + diff * increment)
    state.samples = min(state.samples + 1, MAX_SAMPLES)
    state.last_ms = ts_ms
    return z
