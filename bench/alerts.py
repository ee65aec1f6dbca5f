"""The alerts group: evaluation throughput against a bare XREADGROUP + XACK loop, latency from a
reading's XADD to its alert change at 10,000 readings/s, and the memory rules state takes.

    python -m bench.alerts [--readings N] [--rounds R] [--live-seconds S] [--state-sensors N]

Throughput: one worker with 20 rules (threshold, rate, anomaly and silence rules over three
metrics, some for every sensor, some for a glob) reads a stream of simulated readings from 1000
sensors with faults; the bare loop only reads and acknowledges. Both read with COUNT 2000, each
in its own consumer group on the same stream, median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import numpy as np
import redis

from analytics.alerts.rules import Rule, parse_rules
from analytics.alerts.worker import alert_runner
from bench.common import print_table, redis_for_bench, start_telemetry
from bench.runner import STREAM, bare_loop
from ingest.contract.reading import entry_time_ms
from ingest.keys import AlertKeys
from ingest.redis.connection import connect, read_range
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings
from simulator.faults import FaultConfig
from simulator.model import SensorBank

FAULTS = FaultConfig(spike_prob=0.001, stuck_prob=0.0005, stuck_value=45.0, duplicate_prob=0.001)
T0 = 1_767_225_600_000


def _rule(name: str, kind: str, metric: str, body: str, sensors: str = "*") -> str:
    return (f'[[rule]]\nname = "{name}"\ntype = "{kind}"\nmetric = "{metric}"\n'
            f'sensors = "{sensors}"\n{body}\n')  # fmt: skip


TWENTY_RULES = "\n".join(
    [
        _rule("hot", "threshold", "temp", 'above = 40.0\nclear = 38.0\nfor = "20s"'),
        _rule("cold", "threshold", "temp", "below = 5.0\nclear = 6.0"),
        _rule("warm-lab", "threshold", "temp", 'above = 28.0\nfor = "1m"', "dev-00*"),
        _rule("damp", "threshold", "humidity", "above = 0.95\nclear = 0.9"),
        _rule("dry", "threshold", "humidity", "below = 0.05"),
        _rule("battery-low", "threshold", "battery_v", "below = 3.5\nclear = 3.6"),
        _rule("battery-flat", "threshold", "battery_v", "below = 3.35"),
        _rule("temp-z", "anomaly", "temp", "z = 6.0"),
        _rule("temp-z-fast", "anomaly", "temp", 'z = 5.0\nwindow = "1m"', "dev-01*"),
        _rule("humidity-z", "anomaly", "humidity", "z = 6.0"),
        _rule("battery-z", "anomaly", "battery_v", "z = 8.0"),
        _rule("temp-jump", "rate", "temp", 'faster_than = 0.5\nwindow = "30s"'),
        _rule("temp-slide", "rate", "temp", 'faster_than = 0.05\nwindow = "5m"'),
        _rule("humidity-jump", "rate", "humidity", 'faster_than = 0.01\nwindow = "30s"'),
        _rule("battery-drop", "rate", "battery_v", 'faster_than = 0.01\ndirection = "falling"'),
        _rule("lab-jump", "rate", "temp", 'faster_than = 0.2\nwindow = "20s"', "dev-00*"),
        '[[rule]]\nname = "silent"\ntype = "silence"\nafter = "30s"\n',
        '[[rule]]\nname = "silent-long"\ntype = "silence"\nafter = "5m"\n',
        '[[rule]]\nname = "no-temp"\ntype = "silence"\nmetric = "temp"\nafter = "1m"\n',
        '[[rule]]\nname = "lab-silent"\ntype = "silence"\nsensors = "dev-00*"\nafter = "10s"\n',
    ]
)


def fill(client: redis.Redis, readings: int, seed: int) -> None:
    bank = SensorBank([f"dev-{i:04d}" for i in range(1000)], 1.0, seed, FAULTS)
    writer = StreamWriter(client, STREAM, readings * 2, batch_size=2000)
    for step in range(readings // 1000):
        for fields in bank.step(np.arange(1000), T0 + step * 1000):
            writer.add(fields)
    writer.flush()


def evaluate(settings: Settings, rules: list[Rule]) -> int:
    runner = alert_runner(connect(settings), settings, rules, "c1")
    return runner.run(threading.Event(), drain=True).processed


def throughput(url: str, readings: int, rounds: int) -> None:
    settings = Settings(redis_url=url, read_batch=2000, stream=STREAM)
    rules = parse_rules(TWENTY_RULES)
    client = redis.Redis.from_url(url, decode_responses=True)
    rates: dict[str, list[float]] = {"bare": [], "alerts": []}
    changes = 0
    for round_no in range(rounds):
        client.flushall()
        fill(client, readings, seed=round_no)
        total = client.xlen(STREAM)
        for name in ("bare", "alerts"):
            start = time.perf_counter()
            read = (
                bare_loop(client, f"bare-{round_no}")
                if name == "bare"
                else evaluate(settings, rules)
            )
            rates[name].append(read / (time.perf_counter() - start))
            assert read == total, (name, read, total)
        changes = client.xlen(settings.alerts_stream)
    bare, alerts = statistics.median(rates["bare"]), statistics.median(rates["alerts"])
    print(f"{readings:,} readings from 1000 sensors (3 metrics, faults), 20 rules, "
          f"{changes} alert changes; median of {rounds} rounds")  # fmt: skip
    row = ("throughput", f"{bare:,.0f}", f"{alerts:,.0f}", f"{alerts / bare:.2f}")
    print_table(["", "bare loop /s", "alert worker /s", "ratio"], [row])


def latency(url: str, seconds: float) -> None:
    """A 10,000-sensor fleet at 1 Hz with spikes, one `telemetry alert-worker` process."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as out:
        out.write(TWENTY_RULES)
    worker = start_telemetry(["alert-worker", "--rules", out.name], url)
    simulate = ["simulate", "--fleet", "10000", "--rate", "1", "--spike", "0.0005"]
    simulator = start_telemetry(simulate, url)
    time.sleep(seconds)
    simulator.terminate()
    simulator.wait()
    time.sleep(2)
    worker.terminate()
    worker.wait()
    os.unlink(out.name)
    delays = [
        int(fields["detected_ms"]) - entry_time_ms(fields["reading"])
        for _, fields in read_range(client, "app:alerts")
        if "reading" in fields and fields["kind"] != "silence"
    ]
    written = client.xlen("app:event")
    print(
        f"\n{written:,} readings in {seconds:.0f} s from 10,000 sensors at 1 Hz "
        f"({written / seconds:,.0f}/s); {len(delays)} alert changes decided by a reading"
    )
    p50, p99 = np.percentile(delays, [50, 99])
    print_table(["XADD of the deciding reading -> change on app:alerts", "p50 ms", "p99 ms"],
                [("one alert worker, 20 rules", f"{p50:.0f}", f"{p99:.0f}")])  # fmt: skip


def state_memory(url: str, sensors: int) -> None:
    """Every sensor under 10 rules that keep state for every sensor (5 anomaly, 5 rate)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    text = "\n".join(
        [_rule(f"z{i}", "anomaly", "temp", f"z = {4 + i}.0") for i in range(5)]
        + [_rule(f"r{i}", "rate", "temp", f"faster_than = {i + 1}.0") for i in range(5)]
    )
    settings = Settings(redis_url=url, read_batch=2000, stream=STREAM)
    writer = StreamWriter(client, STREAM, sensors * 10, batch_size=2000)
    for step in range(3):
        for i in range(sensors):
            writer.add({"sensor_id": f"dev-{i:06d}", "ts": str(T0 + step * 10_000),
                        "temp": f"{20 + (i % 7) * 0.1 + step * 0.01:.2f}"})  # fmt: skip
    writer.flush()
    before = int(client.info("memory")["used_memory"])
    evaluate(settings, parse_rules(text))
    after = int(client.info("memory")["used_memory"])
    state_bytes = int(client.memory_usage(AlertKeys().state, samples=0) or 0)
    clock_bytes = int(client.memory_usage(AlertKeys().clock, samples=0) or 0)
    print(f"\nrules state for {sensors:,} sensors x 10 stateful rules (5 anomaly, 5 rate)")
    print_table(["measure", "MiB", "bytes per sensor-rule"], [
        ("INFO used_memory growth", f"{(after - before) / 2**20:.1f}",
         f"{(after - before) / (sensors * 10):.0f}"),
        ("MEMORY USAGE of the state hash", f"{state_bytes / 2**20:.1f}",
         f"{state_bytes / (sensors * 10):.0f}"),
        ("MEMORY USAGE of the clock hash", f"{clock_bytes / 2**20:.1f}", "-"),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--live-seconds", type=float, default=30.0)
    parser.add_argument("--state-sensors", type=int, default=100_000)
    args = parser.parse_args()
    with redis_for_bench() as url:
        throughput(url, args.readings, args.rounds)
        latency(url, args.live_seconds)
        state_memory(url, args.state_sensors)


if __name__ == "__main__":
    main()
