"""The life of one alert per (sensor, rule), computed for many sensors at once with numpy.

A round holds at most one reading per sensor, so each sensor's readings still go through its
rule one at a time, in order. Every rule kind reduces a reading to "is this bad?" and "is this
recovered?"; the lifecycle is shared: raise when bad (after `for`, outside the cooldown), resolve
when recovered. Only exact IEEE arithmetic is used (+ - * / sqrt max), so a sensor's numbers are
the same bits however its readings were split into batches and rounds.

State is a fixed-size little-endian record per (sensor, rule), kept as is in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analytics.alerts.rules import Rule

NEVER = -1
# A rate rule remembers a few readings per window, evenly spaced, so its state stays small at any
# reading rate; the change is measured against the oldest, 3/4 to 4/4 of a window ago.
RATE_ANCHORS = 4
# Below this deviation an anomaly rule treats the history as flat, so z stays finite.
MIN_DEVIATION = 1e-12
MAX_SAMPLES = 1 << 30

_LIFE = [("open", "<i8"), ("pending", "<i8"), ("quiet", "<i8")]
_ANOMALY = [("mean", "<f8"), ("var", "<f8"), ("samples", "<i8"), ("last", "<i8")]
_RATE = [("count", "<i8"), ("t", "<i8", (RATE_ANCHORS + 1,)), ("v", "<f8", (RATE_ANCHORS + 1,))]
DTYPES = {
    "threshold": np.dtype(_LIFE),
    "anomaly": np.dtype([*_LIFE, *_ANOMALY]),
    "rate": np.dtype([*_LIFE, *_RATE]),
}

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Records = npt.NDArray[np.void]


def fresh(kind: str, n: int) -> Records:
    """States that carry nothing yet."""
    records = np.zeros(n, DTYPES[kind])
    for name in ("open", "pending", "quiet"):
        records[name] = NEVER
    return records


def is_fresh(records: Records) -> Bools:
    """Threshold states equal to a fresh one: nothing to store."""
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


def quiet_on_fresh(rule: Rule, values: Floats) -> Bools:
    """Readings that leave a fresh threshold state fresh: the common case needs no state."""
    if rule.kind != "threshold":
        return np.zeros(len(values), dtype=bool)
    return ~(values > rule.level) if rule.rising else ~(values < rule.level)


def step(rule: Rule, records: Records, ts: Ints, values: Floats) -> Decisions:
    """Feed one reading to each of these states (one row per sensor); they change in place."""
    if rule.kind == "threshold":
        bad = values > rule.level if rule.rising else values < rule.level
        recovered = values <= rule.clear if rule.rising else values >= rule.clear
        return _lifecycle(rule, records, ts, values, bad, recovered, np.ones(len(ts), bool))
    if rule.kind == "rate":
        rate, known = _rate(rule, records, ts, values)
        if rule.direction == "rising":
            bad, recovered = rate > rule.level, rate <= rule.clear
        elif rule.direction == "falling":
            bad, recovered = rate < -rule.level, rate >= -rule.clear
        else:
            bad, recovered = np.abs(rate) > rule.level, np.abs(rate) <= rule.clear
        return _lifecycle(rule, records, ts, rate, bad, recovered, known)
    if rule.kind == "anomaly":
        z, known = _z_then_learn(rule, records, ts, values)
        bad, recovered = np.abs(z) > rule.level, np.abs(z) <= rule.clear
        return _lifecycle(rule, records, ts, z, bad, recovered, known)
    raise ValueError(f"rule {rule.name}: {rule.kind} rules are judged by the clock, not readings")


def _lifecycle(
    rule: Rule, records: Records, ts: Ints, score: Floats, bad: Bools, recovered: Bools,
    judged: Bools,
) -> Decisions:  # fmt: skip
    """Raise and resolve; rows not `judged` (no score yet) change nothing."""
    opened = records["open"]
    pending = records["pending"]
    quiet = records["quiet"]
    is_open = opened != NEVER
    resolved = judged & is_open & recovered
    raised_ms = np.where(resolved, opened, NEVER)
    idle = judged & ~is_open & ~bad
    starting = judged & ~is_open & bad
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
    return Decisions(raised, resolved, score, raised_ms)


def _rate(rule: Rule, records: Records, ts: Ints, values: Floats) -> tuple[Floats, Bools]:
    """Units per second between each reading and the oldest remembered one within the window;
    known only once the remembered history spans half a window."""
    window = rule.window_ms
    t, v, count = records["t"], records["v"], records["count"]
    slots = np.arange(RATE_ANCHORS + 1)
    filled = slots[None, :] < count[:, None]
    # Forget anchors older than the window (they are the first ones).
    old = (filled & (t < (ts - window)[:, None])).sum(axis=1)
    take = np.minimum(slots[None, :] + old[:, None], RATE_ANCHORS)
    t = np.take_along_axis(t, take, axis=1)
    v = np.take_along_axis(v, take, axis=1)
    count = count - old
    rows = np.arange(len(ts))
    known = (count > 0) & (ts - t[:, 0] >= window / 2)
    elapsed = np.where(known, ts - t[:, 0], 1)
    rate = np.where(known, (values - v[:, 0]) * 1000.0 / elapsed, 0.0)
    newest = np.where(count > 0, t[rows, np.maximum(count - 1, 0)], 0)
    append = (count == 0) | (ts - newest >= window / RATE_ANCHORS)
    # A full memory drops its oldest to make room.
    full = append & (count == RATE_ANCHORS + 1)
    t[full] = np.roll(t[full], -1, axis=1)
    v[full] = np.roll(v[full], -1, axis=1)
    count = np.where(full, count - 1, count)
    at = np.minimum(count, RATE_ANCHORS)
    t[rows[append], at[append]] = ts[append]
    v[rows[append], at[append]] = values[append]
    records["t"], records["v"] = t, v
    records["count"] = count + append
    return rate, known


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
