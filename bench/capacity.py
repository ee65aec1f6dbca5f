"""The whole pipeline on this machine: the highest rate it sustains with fresh answers.

    python -m bench.capacity [--rates 10000,15000,20000,25000] [--seconds 30] [--aggregators 1]

For each rate, on a fresh private Redis: a simulator fleet of that many sensors at 1 Hz (three
metrics a reading), the aggregator(s), an alert worker with the sample rules, and the API, all
on this machine. After a 5 s warm-up, a probe reading is timed from its XADD until the API
shows it (as `bench.serving` does) for `--seconds`. A rate is sustained when the freshness p99
stays under 100 ms and the aggregates group is not falling behind (what it has not settled at
the end is under one second of readings). Per process, the share of a core it used over the
probing: where the time goes at the limit.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import redis

from bench.common import print_table, redis_for_bench, start_telemetry
from bench.serving import Api, percentile, probe
from telemetry.localserver import free_port, port_open

RULES = Path(__file__).resolve().parent.parent / "analytics" / "alerts" / "sample_rules.toml"
FRESH_P99_MS = 100.0
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User and system CPU a process has used (s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class Run:
    rate: int
    written_per_s: float
    p50_ms: float
    p99_ms: float
    behind: int
    cores: dict[str, float]

    @property
    def sustained(self) -> bool:
        return self.p99_ms < FRESH_P99_MS and self.behind < self.rate


def run_at(url: str, rate: int, seconds: int, aggregators: int) -> Run:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    port = free_port()
    processes: dict[str, Popen[bytes]] = {
        "api": start_telemetry(["api"], url, TELEMETRY_API_PORT=str(port)),
        "simulator": start_telemetry(["simulate", "--fleet", str(rate), "--rate", "1"], url),
        "alert worker": start_telemetry(["alert-worker", "--rules", str(RULES)], url),
    }
    for i in range(aggregators):
        processes[f"aggregator {i + 1}"] = start_telemetry(["aggregate"], url)
    try:
        while not port_open(port):
            time.sleep(0.05)
        time.sleep(5)
        began = time.monotonic()
        used = {name: cpu_s(p.pid) for name, p in processes.items()}
        used["redis-server"] = redis_cpu_s(client)
        added = int(client.xinfo_stream("app:event")["entries-added"])
        found = probe(client, Api(port), seconds)
        elapsed = time.monotonic() - began
        cores = {name: (cpu_s(p.pid) - used[name]) / elapsed for name, p in processes.items()}
        cores["redis-server"] = (redis_cpu_s(client) - used["redis-server"]) / elapsed
        written = (int(client.xinfo_stream("app:event")["entries-added"]) - added) / elapsed
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait()
    return Run(
        rate, written, percentile(found.delays, 50), percentile(found.delays, 99), found.behind,
        cores,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rates",
        type=lambda text: [int(rate) for rate in text.split(",")],
        default=[10_000, 15_000, 20_000, 25_000],
    )
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--aggregators", type=int, default=1)
    args = parser.parse_args()
    runs = []
    with redis_for_bench() as url:
        for rate in args.rates:
            runs.append(run_at(url, rate, args.seconds, args.aggregators))
            print(f"{rate:,} readings/s done", flush=True)
    names = list(runs[0].cores)
    print_table(
        ["sensors at 1 Hz", "written/s", "fresh p50 ms", "p99 ms", "behind", "sustained",
         *[f"{name} (cores)" for name in names]],
        [
            (f"{r.rate:,}", f"{r.written_per_s:,.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
             f"{r.behind:,}", "yes" if r.sustained else "no",
             *[f"{r.cores[name]:.2f}" for name in names])
            for r in runs
        ],
    )  # fmt: skip
    best = [r.rate for r in runs if r.sustained]
    print(f"highest sustained: {max(best):,} readings/s" if best else "none sustained")


if __name__ == "__main__":
    main()
