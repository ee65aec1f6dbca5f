"""Rules and the alert kernels, without servers: scenarios, a plain-Python reference fed the same
readings (same decisions, same state, bit for bit), and many sensors at once against one."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.alerts import kernels
from analytics.alerts.rules import Rule, load_rules, parse_rules
from analytics.alerts.worker import config_from
from ingest.settings import Settings
from telemetry.up import sample_rules
from tests import alerts_reference as reference

RAISED, RESOLVED = reference.RAISED, reference.RESOLVED
Points = list[tuple[int, float]]


def rule_of(text: str) -> Rule:
    [rule] = parse_rules("[[rule]]\nname = 'r'\n" + text)
    return rule


def feed(rule: Rule, points: Points) -> list[tuple[str, int]]:
    """The kernels, one reading at a time, through a record that survives a trip as bytes."""
    record = kernels.fresh(rule.kind, 1)
    out = []
    for ts, value in points:
        record = np.frombuffer(record.tobytes(), kernels.dtype_of(rule.kind)).copy()
        decided = kernels.step(rule, record, np.array([ts]), np.array([value]))
        if decided.raised[0]:
            out.append((RAISED, ts))
        elif decided.resolved[0]:
            out.append((RESOLVED, ts))
    return out


def feed_reference(rule: Rule, points: Points) -> tuple[list[tuple[str, int]], reference.RuleState]:
    state = reference.RuleState()
    out = []
    for ts, value in points:
        decision = reference.step(rule, state, ts, value)
        if decision is not None:
            out.append((decision.state, ts))
    return out, state


def test_the_sample_rules_load() -> None:
    rules = load_rules(sample_rules())
    assert {r.kind for r in rules} == {"threshold", "anomaly", "rate", "silence"}
    assert config_from(Settings(rules=sample_rules())).rules == rules


def test_below_threshold_clears_above_its_clear_level() -> None:
    rule = rule_of("type = 'threshold'\nmetric = 't'\nbelow = 5\nclear = 7\n")
    points = [(0, 6.0), (1000, 4.0), (2000, 6.0), (3000, 7.0), (4000, 3.0)]
    assert feed(rule, points) == [(RAISED, 1000), (RESOLVED, 3000), (RAISED, 4000)]


def test_cooldown_holds_a_new_alert_back_until_it_ends() -> None:
    rule = rule_of("type = 'threshold'\nmetric = 't'\nabove = 10\ncooldown = '10s'\n")
    points = [(0, 11.0), (1000, 5.0), (2000, 11.0), (10_000, 11.0), (11_000, 11.0)]
    assert feed(rule, points) == [(RAISED, 0), (RESOLVED, 1000), (RAISED, 11_000)]


def test_rate_is_measured_over_the_window() -> None:
    rule = rule_of("type = 'rate'\nmetric = 't'\nfaster_than = 0.5\nwindow = '20s'\n")
    calm = [(i * 1000, 20.0 + 0.1 * i) for i in range(60)]
    assert feed(rule, calm) == []
    ramp = calm + [(60_000 + i * 1000, 26.0 + 1.0 * i) for i in range(1, 40)]
    decisions = feed(rule, ramp)
    assert decisions[0][0] == RAISED
    # 1 unit/s after 0.1 unit/s: the rate over 20 s passes 0.5 within the window.
    assert 60_000 < decisions[0][1] <= 80_000


def test_rising_rate_ignores_a_fall() -> None:
    rule = rule_of("type = 'rate'\nmetric = 't'\nfaster_than = 0.5\ndirection = 'rising'\n")
    falling = [(i * 1000, 100.0 - 2.0 * i) for i in range(120)]
    assert feed(rule, falling) == []


RULES = [
    "type = 'threshold'\nmetric = 't'\nabove = 1.0\nclear = 0.5\nfor = '3s'\ncooldown = '5s'\n",
    "type = 'threshold'\nmetric = 't'\nbelow = -1.0\n",
    "type = 'rate'\nmetric = 't'\nfaster_than = 0.2\nwindow = '10s'\nclear = 0.1\n",
    "type = 'rate'\nmetric = 't'\nfaster_than = 0.2\nwindow = '7s'\ndirection = 'falling'\n",
    "type = 'anomaly'\nmetric = 't'\nz = 2.0\nclear = 1.0\nmin_samples = 5\nwindow = '9s'\n",
]
readings = st.lists(
    st.tuples(st.integers(0, 4000), st.floats(-3, 3, allow_nan=False) | st.sampled_from([0.0])),
    min_size=1,
    max_size=80,
)


def timed(steps: list[tuple[int, float]]) -> Points:
    """Event times that never go back, with repeats, short and long gaps."""
    points, ts = [], 1_700_000_000_000
    for gap, value in steps:
        ts += gap
        points.append((ts, value))
    return points


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(RULES), readings)
def test_the_kernels_match_the_reference_bit_for_bit(
    text: str, steps: list[tuple[int, float]]
) -> None:
    rule = rule_of(text)
    points = timed(steps)
    expected, state = feed_reference(rule, points)
    assert feed(rule, points) == expected
    record = kernels.fresh(rule.kind, 1)
    for ts, value in points:
        kernels.step(rule, record, np.array([ts]), np.array([value]))
    assert (int(record["open"][0]), int(record["pending"][0]), int(record["quiet"][0])) == (
        state.open_since_ms, state.pending_since_ms, state.quiet_until_ms,
    )  # fmt: skip
    if rule.kind == "anomaly":
        assert (float(record["mean"][0]), float(record["var"][0])) == (state.mean, state.var)
    if rule.kind == "rate":
        count = int(record["count"][0])
        kept = list(zip(record["t"][0][:count].tolist(), record["v"][0][:count].tolist(),
                        strict=True))  # fmt: skip
        assert kept == state.anchors


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(RULES), st.lists(readings, min_size=2, max_size=6))
def test_many_sensors_at_once_decide_as_each_alone(text: str, series: list[list[tuple[int, float]]]
                                                   ) -> None:  # fmt: skip
    rule = rule_of(text)
    sensors = [timed(steps) for steps in series]
    alone = [feed(rule, points) for points in sensors]
    records = kernels.fresh(rule.kind, len(sensors))
    together: list[list[tuple[str, int]]] = [[] for _ in sensors]
    for k in range(max(len(points) for points in sensors)):
        rows = np.array([i for i, points in enumerate(sensors) if k < len(points)])
        ts = np.array([sensors[i][k][0] for i in rows])
        values = np.array([sensors[i][k][1] for i in rows])
        state = records[rows]
        decided = kernels.step(rule, state, ts, values)
        records[rows] = state
        for j, i in enumerate(rows.tolist()):
            if decided.raised[j]:
                together[i].append((RAISED, int(ts[j])))
            elif decided.resolved[j]:
                together[i].append((RESOLVED, int(ts[j])))
    assert together == alone
