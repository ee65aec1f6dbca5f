"""The alerts group on real Redis: exact alert sequences from the simulator's faults, the same
alerts from one worker or several, through kill -9, and bad rules files refused at start.

Over 400 lines: the tests share the reference evaluation (`alerts_reference`) and the
simulator's fault timelines they compare against."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from analytics.alerts.evaluator import GROUP
from ingest.contract.reading import entry_time_ms
from ingest.keys import AlertKeys, StreamKeys
from ingest.redis.connection import fields_arg, read_range
from ingest.settings import Settings
from ingest.status import stream_status
from simulator.faults import FaultConfig
from simulator.model import SensorBank
from telemetry.web.app import create_app
from tests.alerting import LiveWorker, changes, comparable, evaluate_all, timeline, write
from tests.conftest import child_env

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

THRESHOLD_RULES = """
[[rule]]
name = "hot"
type = "threshold"
metric = "temp"
severity = "critical"
above = 40.0
clear = 38.0
for = "30s"
"""


def reading(sensor: str, i: int, temp: float, *, step_ms: int = 1000) -> dict[str, str]:
    return {"sensor_id": sensor, "ts": str(T0 + i * step_ms), "seq": str(i), "temp": repr(temp)}


def test_threshold_waits_for_its_duration_and_clears_past_the_clear_level(
    client: redis.Redis, settings: Settings
) -> None:
    temps = [20.0] * 5 + [41.0] * 20 + [20.0] + [41.0] * 40 + [39.0] * 5 + [37.5] + [41.0] * 3
    write(client, settings.stream, [reading("s1", i, t) for i, t in enumerate(temps)], first_ms=1)
    evaluate_all(client, settings, THRESHOLD_RULES)
    got = changes(client, settings.alerts_stream)
    # The first hot spell lasts 20 s: too short. The second starts at reading 26 and holds; the
    # 39s do not clear it (clear is 38); 37.5 does.
    assert [(c["state"], int(c["ts"]) - T0) for c in got] == [
        ("raised", 56_000),
        ("resolved", 71_000),
    ]
    raised, resolved = got
    assert raised["value"] == "41.0" and raised["limit"] == "40.0"
    assert raised["severity"] == "critical" and raised["kind"] == "threshold"
    assert resolved["raised_ts"] == str(T0 + 56_000) and resolved["limit"] == "38.0"
    assert client.hlen(AlertKeys(settings.alerts_stream).open) == 0
    status = stream_status(settings, settings.stream, settings.maxlen, 0.8)
    [group] = [g for g in status.groups if g.name == GROUP]
    assert group.settled == {"evaluated": len(temps)} and group.unaccounted == 0


def _bank_readings(faults: FaultConfig, n: int, seed: int) -> list[dict[str, str]]:
    bank = SensorBank(["s1"], 1.0, seed, faults)
    out: list[dict[str, str]] = []
    idx = np.array([0])
    for i in range(n):
        out.extend(bank.step(idx, T0 + i * 1000))
    return out


def test_stuck_high_sensor_raises_after_the_duration_and_resolves_below_clear(
    client: redis.Redis, settings: Settings
) -> None:
    faults = FaultConfig(stuck_prob=0.002, stuck_s=90.0, stuck_value=45.0)
    readings = _bank_readings(faults, 3000, seed=7)
    write(client, settings.stream, readings, first_ms=1)
    evaluate_all(client, settings, THRESHOLD_RULES)

    # The reference, straight from the data: each run of readings above 40 that lasts 30 s
    # raises at its first reading 30 s in, and resolves at the first reading at or below 38.
    expected: list[tuple[str, str, str, int]] = []
    ts = [int(r["ts"]) for r in readings]
    temp = [float(r["temp"]) for r in readings]
    i = 0
    while i < len(temp):
        if temp[i] <= 40.0:
            i += 1
            continue
        start = i
        while i < len(temp) and temp[i] > 40.0 and ts[i] - ts[start] < 30_000:
            i += 1
        if i == len(temp) or temp[i] <= 40.0:
            continue
        expected.append(("s1", "hot", "raised", ts[i]))
        while i < len(temp) and temp[i] > 38.0:
            i += 1
        if i < len(temp):
            expected.append(("s1", "hot", "resolved", ts[i]))
    assert len(expected) >= 4, "the seed should give at least two stuck episodes"
    assert timeline(changes(client, settings.alerts_stream)) == expected


ANOMALY_RULES = """
[[rule]]
name = "odd"
type = "anomaly"
metric = "temp"
z = 6.0
window = "10m"
min_samples = 30
"""


def test_spikes_raise_an_anomaly_that_resolves_on_the_next_reading(
    client: redis.Redis, settings: Settings
) -> None:
    clean = _bank_readings(FaultConfig(), 3000, seed=1)
    spiky = _bank_readings(FaultConfig(spike_prob=0.005, spike_size=25.0), 3000, seed=1)
    spikes = [i for i, (a, b) in enumerate(zip(clean, spiky, strict=True)) if a != b]
    assert len(spikes) >= 5 and spikes[0] > 100 and spikes[-1] < 2999
    assert all(b - a > 1 for a, b in itertools.pairwise(spikes))
    write(client, settings.stream, spiky, first_ms=1)
    evaluate_all(client, settings, ANOMALY_RULES)

    expected = []
    for i in spikes:
        expected.append(("s1", "odd", "raised", T0 + i * 1000))
        expected.append(("s1", "odd", "resolved", T0 + (i + 1) * 1000))
    assert timeline(changes(client, settings.alerts_stream)) == expected


# Every sensor, and the same for two of the sensors on one metric, beside a rule that watches
# none of them: each rule's alerts follow its own sensors' dropouts.
SILENCE_RULES = """
[[rule]]
name = "quiet"
type = "silence"
after = "1s"

[[rule]]
name = "quiet-some"
type = "silence"
sensors = "d[01]"
metric = "temp"
after = "1s"

[[rule]]
name = "elsewhere"
type = "silence"
sensors = "x*"
after = "1s"
"""


def test_dropouts_raise_silence_within_its_time_and_the_next_reading_resolves_it(
    client: redis.Redis, settings: Settings
) -> None:
    """Simulated sensors at 10 Hz that drop out for 2.5 s at random; silence after 1 s."""
    bank = SensorBank(["d0", "d1", "d2"], 10.0, 4, FaultConfig(dropout_prob=0.03, dropout_s=2.5))
    worker = LiveWorker(client, settings.replace(block_ms=100), SILENCE_RULES)
    try:
        started = time.monotonic()
        for step in range(120):
            for fields in bank.step(np.arange(3), int(time.time() * 1000)):
                client.xadd(settings.stream, fields_arg(fields))
            time.sleep(max(0.0, started + (step + 1) * 0.1 - time.monotonic()))
        for fields in bank.step(np.arange(3), int(time.time() * 1000)):
            client.xadd(settings.stream, fields_arg(fields))
        time.sleep(0.5)
    finally:
        worker.stop()
    arrivals: dict[str, list[str]] = {}
    for entry_id, fields in read_range(client, settings.stream):
        arrivals.setdefault(fields["sensor_id"], []).append(entry_id)
    records = changes(client, settings.alerts_stream)
    assert {r["rule"] for r in records} == {"quiet", "quiet-some"}
    for rule, watched in (("quiet", {"d0", "d1", "d2"}), ("quiet-some", {"d0", "d1"})):
        mine = [r for r in records if r["rule"] == rule]
        assert {r["sensor_id"] for r in mine} == watched, rule
        assert_silences_follow_dropouts(
            mine, {sensor: ids for sensor, ids in arrivals.items() if sensor in watched}
        )


def assert_silences_follow_dropouts(
    records: list[dict[str, str]], arrivals: dict[str, list[str]]
) -> None:
    """Each gap over 2 s raised one alert, within 1-2 s of the last reading, and the next reading
    resolved it; no gap of a second or less raised one."""
    raised = {
        (r["sensor_id"], int(r["last_heard_ms"])): r for r in records if r["state"] == "raised"
    }
    resolved = {(r["sensor_id"], r["reading"]) for r in records if r["state"] == "resolved"}
    assert len(raised) == sum(r["state"] == "raised" for r in records), "raised twice"
    long_gaps = 0
    for sensor, ids in arrivals.items():
        for before, after in itertools.pairwise(ids):
            gap = entry_time_ms(after) - entry_time_ms(before)
            alert = raised.pop((sensor, entry_time_ms(before)), None)
            if gap > 2000:
                long_gaps += 1
                assert alert is not None, f"{sensor} silent {gap} ms after {before}: no alert"
            if gap <= 1000:
                assert alert is None, f"{sensor} raised after only {gap} ms"
            if alert is not None:
                # Raised within after + 1 s of the last reading; resolved by the next one.
                assert 1000 <= int(alert["detected_ms"]) - entry_time_ms(before) <= 2000
                assert (sensor, after) in resolved
    assert long_gaps >= 3, "the seed should give dropouts"
    # A sensor still in a dropout when the run ended was rightly found silent after its last.
    for sensor, ids in arrivals.items():
        raised.pop((sensor, entry_time_ms(ids[-1])), None)
    assert raised == {}, f"alerts no gap explains: {raised}"


FLEET_RULES = """
[[rule]]
name = "hot"
type = "threshold"
metric = "temp"
above = 40.0
clear = 38.0
for = "20s"

[[rule]]
name = "cold"
type = "threshold"
sensors = "dev-1*"
metric = "temp"
below = 18.0
clear = 18.5

[[rule]]
name = "odd"
type = "anomaly"
metric = "temp"
z = 6.0
min_samples = 20

[[rule]]
name = "fast"
type = "rate"
metric = "temp"
faster_than = 0.3
window = "20s"
cooldown = "30s"
"""
FLEET_FAULTS = FaultConfig(
    spike_prob=0.003,
    stuck_prob=0.002,
    stuck_s=40.0,
    stuck_value=45.0,
    late_prob=0.002,
    late_s=10.0,
    duplicate_prob=0.003,
)


def fleet_readings(sensors: int, steps: int, seed: int) -> list[dict[str, str]]:
    bank = SensorBank([f"dev-{i}" for i in range(sensors)], 1.0, seed, FLEET_FAULTS)
    idx = np.arange(sensors)
    out: list[dict[str, str]] = []
    for step in range(steps):
        out.extend(bank.step(idx, T0 + step * 1000))
    return out + bank.release_held()


def on_stream(settings: Settings, name: str) -> Settings:
    return settings.replace(stream=f"{name}:event", alerts_stream=f"{name}:alerts")


def alert_worker(settings: Settings, rules: Path, consumer: str) -> subprocess.Popen[bytes]:
    command = ["alert-worker", "--rules", str(rules), "--consumer", consumer, "--drain"]
    return subprocess.Popen(
        [sys.executable, "-m", "telemetry", *command],
        env=child_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def reference_changes(
    client: redis.Redis, settings: Settings, readings: list[dict[str, str]]
) -> list[tuple[tuple[str, str], ...]]:
    ref = on_stream(settings, "reference")
    write(client, ref.stream, readings, first_ms=1)
    evaluate_all(client, ref, FLEET_RULES)
    found = comparable(changes(client, ref.alerts_stream))
    kinds = {dict(c)["kind"] for c in found}
    assert kinds == {"threshold", "anomaly", "rate"}, "the faults should trip every kind of rule"
    return found


def test_one_two_and_four_workers_give_the_same_alerts(
    client: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    readings = fleet_readings(200, 150, seed=3)
    expected = reference_changes(client, settings, readings)
    rules = tmp_path / "alerts.toml"
    rules.write_text(FLEET_RULES)
    for workers in (1, 2, 4):
        # No worker dies here, so nothing should ever be claimed; the test settings' 300 ms
        # claim idle time is shorter than a worker can go unscheduled on a loaded two-core
        # machine, and every claim of a batch waiting its turn counts as a delivery.
        run = on_stream(settings.replace(read_batch=300, claim_idle_ms=3000), f"w{workers}")
        write(client, run.stream, readings, first_ms=1)
        procs = [alert_worker(run, rules, f"c{i}") for i in range(workers)]
        for proc in procs:
            assert proc.wait(timeout=120) == 0
        # A batch waiting its turn behind other workers' must not be dead-lettered either.
        dead = read_range(client, StreamKeys(run.stream).dead)
        assert not dead, (workers, len(dead), dead[0][1]["reason"])
        assert comparable(changes(client, run.alerts_stream)) == expected, f"{workers} workers"
        ledger = client.hgetall(StreamKeys(run.stream).ledger(GROUP))
        assert int(ledger["settled:evaluated"]) + int(ledger.get("settled:stale", 0)) == len(
            readings
        )


@pytest.mark.slow
def test_kill_9_of_a_worker_loses_and_repeats_no_alert_change(
    client: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    readings = fleet_readings(500, 200, seed=5)
    expected = reference_changes(client, settings, readings)
    rules = tmp_path / "alerts.toml"
    rules.write_text(FLEET_RULES)
    # Each kill may hand a batch to the next victim: the kills alone must never take an entry
    # past the delivery limit, where it would be dead-lettered instead of evaluated.
    run = on_stream(settings.replace(read_batch=200, max_deliveries=10), "killed")
    write(client, run.stream, readings, first_ms=1)
    rng = random.Random(5)
    steady = [alert_worker(run, rules, f"steady-{i}") for i in range(2)]
    victim = alert_worker(run, rules, "victim-0")
    for round_ in range(1, 4):
        time.sleep(rng.uniform(0.5, 2.0))
        victim.kill()
        victim.wait()
        victim = alert_worker(run, rules, f"victim-{round_}")
    for proc in [*steady, victim]:
        assert proc.wait(timeout=180) == 0
    assert client.xlen(StreamKeys(run.stream).dead) == 0
    assert comparable(changes(client, run.alerts_stream)) == expected
    assert client.xpending(run.stream, GROUP)["pending"] == 0


def test_a_late_burst_gives_the_alerts_its_data_implies_once(
    client: redis.Redis, settings: Settings
) -> None:
    faults = FaultConfig(
        stuck_prob=0.004, stuck_s=40.0, stuck_value=45.0, late_prob=0.01, late_s=60.0,
        duplicate_prob=0.01,
    )  # fmt: skip
    bank = SensorBank([f"dev-{i}" for i in range(20)], 1.0, 9, faults)
    sent: list[dict[str, str]] = []
    for step in range(600):
        sent.extend(bank.step(np.arange(20), T0 + step * 1000))
    sent += bank.release_held()
    in_time = sorted({(r["sensor_id"], r["seq"]): r for r in sent}.values(),
                     key=lambda r: (int(r["ts"]), r["sensor_id"]))  # fmt: skip
    assert len(in_time) < len(sent), "the run should send duplicates"
    assert sent != in_time, "the run should hold readings back"

    late = on_stream(settings, "late")
    write(client, late.stream, sent, first_ms=1)
    evaluate_all(client, late, THRESHOLD_RULES)
    punctual = on_stream(settings, "punctual")
    write(client, punctual.stream, in_time, first_ms=1)
    evaluate_all(client, punctual, THRESHOLD_RULES)

    got = timeline(changes(client, late.alerts_stream))
    assert got == timeline(changes(client, punctual.alerts_stream))
    assert len(got) == len(set(got)) >= 4
    ledger = client.hgetall(StreamKeys(late.stream).ledger(GROUP))
    assert int(ledger["settled:stale"]) == len(sent) - len(in_time)


@pytest.mark.parametrize(
    ("rules", "line", "reason"),
    [
        ("[[rule]]\nname = 'a'\ntype = 'threshold'\nmetric = 'temp'\nabove = 4\nclear = 5\n",
         6, "clear must be at or below above"),
        ("[[rule]]\nname = 'a'\ntype = 'gauge'\nmetric = 'temp'\n", 3, "type must be one of"),
        ("[[rule]]\nname = 'a'\ntype = 'silence'\nafter = '-5s'\n", 4, "expected a duration"),
        ("[[rule]]\nname = 'a'\ntype = 'threshold'\nmetric = 'temp'\nabove = 4\n\n"
         "[[rule]]\nname = 'b'\ntype = 'rate'\nmetric = 'temp'\nfaster_than = 1\nfor = '5s'\n",
         12, "'for' is not a setting of a rate rule"),
        ("[[rule]]\nname = 'a'\ntype = 'anomaly'\nz = 3\n", 1, "metric is missing"),
        ("[[rule]]\nname = 'a'\ntype = 'anomaly'\nmetric = 'ts'\nz = 3\n", 4,
         "metric must be a metric name"),
        ("[[rule]\nname = 'a'\n", 1, "not valid TOML"),
    ],
)  # fmt: skip
def test_a_rules_file_that_makes_no_sense_stops_the_worker_with_file_line_and_reason(
    settings: Settings, tmp_path: Path, rules: str, line: int, reason: str
) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text(rules)
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", "alert-worker", "--rules", str(path), "--drain"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    [message] = done.stderr.strip().splitlines()
    if "TOML" not in reason:
        assert f"{path}:{line}: " in message
    assert reason in message


def test_alerts_are_listed_by_the_cli_and_http(client: redis.Redis, settings: Settings) -> None:
    temps = [41.0] * 40 + [30.0] * 5
    write(client, settings.stream, [reading("s1", i, t) for i, t in enumerate(temps)], first_ms=1)
    write(client, settings.stream, [reading("s2", i, 45.0) for i in range(40)], first_ms=100)
    evaluate_all(client, settings, THRESHOLD_RULES)

    def cli(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "telemetry", "alerts", *flags],
                              env=child_env(settings), capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    listed = json.loads(cli("--format", "json").stdout)
    assert [(a["sensor_id"], a["state"]) for a in listed] == [
        ("s2", "raised"),
        ("s1", "resolved"),
        ("s1", "raised"),
    ]
    [still_open] = json.loads(cli("--open", "--format", "json").stdout)
    assert still_open["sensor_id"] == "s2" and still_open["ts_ms"] == T0 + 30_000
    table = cli("--open", "--sensor", "s1*").stdout
    assert table.strip() == "no open alerts"
    assert "s2" in cli("--open").stdout.splitlines()[1]
    assert cli("--since", "yesterday").returncode == 2

    http = TestClient(create_app(settings))
    assert [a["state"] for a in http.get("/alerts", params={"sensor": "s1"}).json()] == [
        "resolved",
        "raised",
    ]
    assert [a["sensor_id"] for a in http.get("/alerts", params={"open": "true"}).json()] == ["s2"]
    assert http.get("/alerts", params={"since": "soon"}).status_code == 422
