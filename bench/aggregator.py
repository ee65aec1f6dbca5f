"""One aggregator process against a bare redis-py loop of XREADGROUP COUNT 2000 + XACK.

    python -m bench.aggregator [--readings N] [--rounds R]

Two stream shapes, 1000 sensors with two metrics each, the last 20 minutes at 1 Hz:
"buffered uploads" (each device sends 50 readings at a time, as after a connection drops) and
"live interleaved" (every sensor's next reading in turn, as a fleet streaming live). The
aggregator computes every statistic for the three default tiers; the bare loop only reads and
acknowledges. Both read with COUNT 2000, each with its own consumer group on the same stream.
Beside the rates, the CPU seconds each spent in Redis (INFO cpu) and in this Python process:
on two cores a rate is limited by the busier of the two and by how well they overlap.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import redis

from analytics.worker import aggregator_runner
from bench.common import print_table, redis_for_bench
from bench.runner import bare_loop
from ingest.redis.connection import connect
from ingest.settings import Settings
from simulator.dataset import make_readings, write


def redis_cpu_s(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def aggregate(settings: Settings, group: str) -> int:
    runner = aggregator_runner(connect(settings), settings, "c1", group)
    return runner.run(threading.Event(), drain=True).processed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    per_sensor = args.readings // 1000
    rows = []
    with redis_for_bench() as url:
        settings = Settings(redis_url=url, read_batch=2000)
        client = redis.Redis.from_url(url, decode_responses=True)
        for shape, burst in (("buffered uploads", 50), ("live interleaved", 1)):
            rates: dict[str, list[float]] = {"bare": [], "aggregator": []}
            # Per method: Redis CPU seconds and Python CPU seconds, per round.
            cpu: dict[str, list[tuple[float, float]]] = {"bare": [], "aggregator": []}
            for round_no in range(args.rounds):
                client.flushall()
                write(client, make_readings(1000, per_sensor, burst, seed=round_no))
                for name in ("bare", "aggregator"):
                    group = f"{name}-{round_no}"
                    redis_before, python_before = redis_cpu_s(client), time.process_time()
                    start = time.perf_counter()
                    if name == "bare":
                        read = bare_loop(client, group)
                    else:
                        # The aggregates group's Lua keeps its own per-group ledger; a fresh
                        # group name per round keeps the rounds independent.
                        read = aggregate(settings, group)
                    rates[name].append(read / (time.perf_counter() - start))
                    cpu[name].append(
                        (
                            redis_cpu_s(client) - redis_before,
                            time.process_time() - python_before,
                        )
                    )
                    assert read == per_sensor * 1000, (name, read)
            bare = statistics.median(rates["bare"])
            agg = statistics.median(rates["aggregator"])
            spent = {}
            for name, rounds in cpu.items():
                in_redis = statistics.median(r for r, _ in rounds)
                in_python = statistics.median(p for _, p in rounds)
                spent[name] = f"{in_redis:.2f} / {in_python:.2f}"
            rows.append(
                (shape, f"{bare:,.0f}", f"{agg:,.0f}", f"{agg / bare:.2f}",
                 spent["bare"], spent["aggregator"])
            )  # fmt: skip
    print(f"{per_sensor * 1000:,} readings, 1000 sensors x 2 metrics, tiers 10s/1m/1h; "
          f"median of {args.rounds} rounds")  # fmt: skip
    print_table(
        [
            "stream shape", "bare loop /s", "aggregator /s", "ratio",
            "bare CPU s: Redis / Python", "aggregator CPU s: Redis / Python",
        ],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
