"""Rules and the per-(sensor, rule) state machines, without servers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from analytics.alerts.machine import RAISED, RESOLVED, RuleState, step
from analytics.alerts.rules import Rule, load_rules, parse_rules
from analytics.alerts.worker import rules_from
from ingest.settings import Settings
from telemetry.up import sample_rules


def rule_of(text: str) -> Rule:
    [rule] = parse_rules("[[rule]]\nname = 'r'\n" + text)
    return rule


def feed(rule: Rule, points: list[tuple[int, float]]) -> list[tuple[str, int]]:
    state = RuleState()
    out = []
    for ts, value in points:
        decision = step(rule, state, ts, value)
        if decision is not None:
            out.append((decision.state, ts))
        # Every step's state survives the trip through Redis unchanged.
        assert RuleState.decode(state.encode()) == state
    return out


def test_the_sample_rules_load() -> None:
    rules = load_rules(sample_rules())
    assert {r.kind for r in rules} == {"threshold", "anomaly", "rate", "silence"}
    assert rules_from(Settings(rules=sample_rules())) == rules


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


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40),
    st.integers(0, 2**40),
)
def test_anomaly_state_round_trips_exactly(values: list[float], start: int) -> None:
    rule = rule_of("type = 'anomaly'\nmetric = 't'\nz = 3\nmin_samples = 5\n")
    feed(rule, [(start + i * 997, v) for i, v in enumerate(values)])
