"""A simulator fleet held at its target rate: 10,000 sensors at 1 Hz by default.

    python -m bench.fleet [--sensors N] [--rate HZ] [--seconds S]

Runs `telemetry simulate --fleet N` against a private Redis and reads the stream's entries-added
counter each second after a warm-up; the reference is the target rate itself. CPU is the
simulator process's user + system time over the measured window.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import redis

from bench.common import print_table, redis_for_bench, start_telemetry

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def added(client: redis.Redis) -> int:
    return int(client.xinfo_stream("app:event")["entries-added"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    target = args.sensors * args.rate
    with redis_for_bench() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        client.flushall()
        sim = start_telemetry(
            ["simulate", "--fleet", str(args.sensors), "--rate", str(args.rate)], url
        )
        try:
            time.sleep(args.warmup)
            start_count, start_cpu, start = added(client), cpu_seconds(sim.pid), time.monotonic()
            per_second = []
            previous = start_count
            for second in range(1, args.seconds + 1):
                time.sleep(max(0.0, start + second - time.monotonic()))
                now = added(client)
                per_second.append(now - previous)
                previous = now
            elapsed = time.monotonic() - start
            cpu = cpu_seconds(sim.pid) - start_cpu
            total = previous - start_count
        finally:
            sim.terminate()
            sim.wait()
    achieved = total / elapsed
    worst = min(per_second)
    # One-second samples see the writer's 1000-entry batches land on either side of a tick.
    five = [sum(per_second[i : i + 5]) / 5 for i in range(0, len(per_second) - 4, 5)]
    print(
        f"{args.sensors:,} sensors at {args.rate:g} Hz for {args.seconds} s after "
        f"{args.warmup} s warm-up"
    )
    print_table(
        ["measure", "value", "ratio to target"],
        [
            ("target readings/s", f"{target:,.0f}", "1.000"),
            ("achieved readings/s (whole window)", f"{achieved:,.0f}", f"{achieved / target:.3f}"),
            ("slowest 1 s", f"{worst:,}", f"{worst / target:.3f}"),
            ("slowest 5 s (per second)", f"{min(five):,.0f}", f"{min(five) / target:.3f}"),
            (
                "median 1 s",
                f"{statistics.median(per_second):,.0f}",
                f"{statistics.median(per_second) / target:.3f}",
            ),
            ("simulator CPU (share of one core)", f"{cpu / elapsed:.1%}", "-"),
        ],
    )


if __name__ == "__main__":
    main()
