"""The simulator: reproducible values, realistic shapes, and each fault doing what it says."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import redis

from ingest.contract.reading import Reading, entry_time_ms
from ingest.settings import Settings
from simulator.faults import FaultConfig
from simulator.model import SensorBank
from tests.conftest import child_env
from tests.helpers import entries

METRICS = ("temp", "humidity", "battery_v")


def run_simulator(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator", *args],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_same_seed_gives_the_same_hundred_readings(client: redis.Redis, settings: Settings) -> None:
    runs = []
    for _ in range(2):
        client.delete(settings.stream)
        done = run_simulator(settings, "sensor1", "--count", "100", "--seed", "7", "--rate", "200")
        assert done.returncode == 0, done.stderr
        readings = [Reading.decode(i, f) for i, f in entries(client, settings.stream)]
        assert [r.seq for r in readings] == list(range(100))
        assert {r.sensor_id for r in readings} == {"sensor1"}
        runs.append([[r.metrics[m] for m in METRICS] for r in readings])
    assert runs[0] == runs[1]
    other = run_simulator(settings, "sensor1", "--count", "100", "--seed", "8", "--rate", "200")
    assert other.returncode == 0
    assert [
        [r[m] for m in METRICS]
        for r in (Reading.decode(i, f).metrics for i, f in entries(client, settings.stream)[-100:])
    ] != runs[0]


def test_a_fleet_derives_ids_from_the_prefix_and_sends_each_count(
    client: redis.Redis, settings: Settings
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "telemetry",
            "simulate",
            "--fleet",
            "250",
            "--prefix",
            "dev-",
            "--rate",
            "20",
            "--count",
            "3",
        ],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    readings = [Reading.decode(i, f) for i, f in entries(client, settings.stream)]
    per_sensor: dict[str, list[int | None]] = {}
    for r in readings:
        per_sensor.setdefault(r.sensor_id, []).append(r.seq)
    assert sorted(per_sensor) == [f"dev-{i:03d}" for i in range(250)]
    assert all(seqs == [0, 1, 2] for seqs in per_sensor.values())


def test_a_fleet_writes_each_tick_as_it_ends(client: redis.Redis, settings: Settings) -> None:
    # With the writer's batch out of reach, only the end of a tick can send readings.
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", "simulate", "--fleet", "100", "--rate", "10",
         "--count", "20"],
        env=child_env(settings, TELEMETRY_WRITE_BATCH="100000"),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    delays = [
        entry_time_ms(entry_id) - Reading.decode(entry_id, fields).ts_ms
        for entry_id, fields in entries(client, settings.stream)
    ]
    assert len(delays) == 2000
    # From the reading's time to the stream: a tick (10 ms) and a round trip, with room for a
    # loaded machine; buffered until the end of the run they would wait up to two seconds.
    assert np.percentile(delays, 90) < 100


def step_all(bank: SensorBank, slots: int) -> list[dict[str, str]]:
    out = []
    everyone = np.arange(len(bank), dtype=np.intp)
    for k in range(slots):
        out += bank.step(everyone, 1_000_000 + k * 1000)
    return out + bank.release_held()


def test_values_are_realistic_a_daily_cycle_humidity_against_temperature_battery_draining() -> None:
    bank = SensorBank(["s"], rate_hz=1 / 60, seed=3, faults=FaultConfig())
    day = step_all(bank, 24 * 60)
    temp = np.array([float(e["temp"]) for e in day])
    humidity = np.array([float(e["humidity"]) for e in day])
    battery = np.array([float(e["battery_v"]) for e in day])
    assert 2.0 < temp.max() - temp.min() < 16.0
    assert np.corrcoef(temp, humidity)[0, 1] < -0.5
    assert battery[:60].mean() > battery[-60:].mean()
    assert ((humidity > 0) & (humidity < 1)).all()


def test_duplicates_resend_the_same_seq_and_ts() -> None:
    bank = SensorBank(["s"], 1.0, 1, FaultConfig(duplicate_prob=0.2))
    sent = step_all(bank, 500)
    seqs = [e["seq"] for e in sent]
    assert 60 < len(sent) - 500 < 140
    assert sorted(set(seqs), key=int) == [str(i) for i in range(500)]
    for a, b in itertools.pairwise(sent):
        if a["seq"] == b["seq"]:
            assert a == b


def test_dropout_silences_the_sensor_without_gaps_in_seq() -> None:
    bank = SensorBank(["s"], 1.0, 1, FaultConfig(dropout_prob=0.01, dropout_s=20))
    sent = step_all(bank, 2000)
    ts = [int(e["ts"]) for e in sent]
    assert len(sent) < 1900
    assert max(b - a for a, b in itertools.pairwise(ts)) >= 20_000
    assert [int(e["seq"]) for e in sent] == list(range(len(sent)))


def test_late_readings_arrive_later_with_their_original_ts() -> None:
    bank = SensorBank(["s"], 1.0, 1, FaultConfig(late_prob=0.01, late_s=30))
    delays, seqs = [], []
    for k in range(2000):
        sent_at = k * 1000
        for entry in bank.step(np.array([0], dtype=np.intp), sent_at):
            delays.append(sent_at - int(entry["ts"]))
            seqs.append(int(entry["seq"]))
    seqs += [int(e["seq"]) for e in bank.release_held()]
    assert sorted(seqs) == list(range(2000))
    assert max(delays) >= 29_000
    assert 0.05 < sum(d > 0 for d in delays) / len(delays) < 0.6


def test_stuck_spike_and_drift_change_only_the_temperature() -> None:
    clean = step_all(SensorBank(["s"], 1.0, 5, FaultConfig()), 3600)
    stuck = step_all(
        SensorBank(["s"], 1.0, 5, FaultConfig(stuck_prob=0.005, stuck_s=60, stuck_value=45.0)), 3600
    )
    spiky = step_all(SensorBank(["s"], 1.0, 5, FaultConfig(spike_prob=0.01, spike_size=25)), 3600)
    drift = step_all(SensorBank(["s"], 1.0, 5, FaultConfig(drift_per_hour=2.0)), 3600)
    for faulty in (stuck, spiky, drift):
        assert [e["humidity"] for e in faulty] == [e["humidity"] for e in clean]
    assert sum(e["temp"] == "45.00" for e in stuck) >= 60
    jumps = [abs(float(a["temp"]) - float(b["temp"])) for a, b in zip(spiky, clean, strict=True)]
    assert 10 < sum(j > 20 for j in jumps) < 70
    assert abs(float(drift[-1]["temp"]) - float(clean[-1]["temp"]) - 2.0) < 0.01
