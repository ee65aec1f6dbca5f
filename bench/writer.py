"""Writer throughput against `redis-benchmark -c 1 -P 64` XADD with the same fields.

    python -m bench.writer [--entries N] [--rounds R]

Every method writes the same 6-field reading to its own stream capped with MAXLEN ~ 100000;
rounds alternate the methods so they share the machine's conditions.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from collections.abc import Callable
from urllib.parse import urlparse

import redis
import walrus

from bench.common import print_table, ratio_rows, redis_for_bench
from ingest.redis.connection import fields_arg
from ingest.redis.writer import StreamWriter

FIELDS = {
    "sensor_id": "dev-00042",
    "ts": "1763900000000",
    "seq": "12345",
    "temp": "21.53",
    "humidity": "0.412",
    "battery_v": "3.702",
}
MAXLEN = 100_000


def redis_benchmark(url: str, entries: int) -> float:
    parsed = urlparse(url)
    args = [f"{k} {v}" for k, v in FIELDS.items()]
    done = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            parsed.hostname or "127.0.0.1",
            "-p",
            str(parsed.port or 6379),
            "-c",
            "1",
            "-P",
            "64",
            "-n",
            str(entries),
            "--csv",
            "XADD",
            "bench:reference",
            "MAXLEN",
            "~",
            str(MAXLEN),
            "*",
            *" ".join(args).split(),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rps = re.findall(r'^"XADD[^"]*","([\d.]+)"', done.stdout, re.MULTILINE)
    return float(rps[-1])


def timed(entries: int, write: Callable[[int], None]) -> float:
    start = time.perf_counter()
    write(entries)
    return entries / (time.perf_counter() - start)


def stream_writer(client: redis.Redis) -> Callable[[int], None]:
    def write(entries: int) -> None:
        writer = StreamWriter(client, "bench:writer", MAXLEN, batch_size=1000)
        for _ in range(entries):
            writer.add(dict(FIELDS))
        writer.flush()

    return write


def redis_py_pipeline(client: redis.Redis) -> Callable[[int], None]:
    def write(entries: int) -> None:
        for start in range(0, entries, 1000):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(1000, entries - start)):
                pipe.xadd("bench:pipeline", fields_arg(FIELDS), maxlen=MAXLEN, approximate=True)
            pipe.execute()

    return write


def walrus_per_call(url: str) -> Callable[[int], None]:
    stream = walrus.Database.from_url(url).Stream("bench:walrus")

    def write(entries: int) -> None:
        for _ in range(entries):
            stream.add(dict(FIELDS), maxlen=MAXLEN, approximate=True)

    return write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with redis_for_bench() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        methods: dict[str, Callable[[int], float]] = {
            "redis-benchmark -c 1 -P 64 (reference)": lambda n: redis_benchmark(url, n),
            "ingest StreamWriter, batch 1000": lambda n: timed(n, stream_writer(client)),
            "redis-py pipeline of xadd, 1000 per execute": (
                lambda n: timed(n, redis_py_pipeline(client))
            ),
            "walrus Stream.add, one call per entry": lambda n: timed(n // 20, walrus_per_call(url)),
        }
        results: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, run in methods.items():
                client.flushall()
                results[name].append(run(args.entries))
    rows = ratio_rows(results, "redis-benchmark -c 1 -P 64 (reference)")
    print(
        f"XADD of a 6-field reading, MAXLEN ~ {MAXLEN}; median of {args.rounds} rounds, "
        f"{args.entries:,} entries each (walrus: 1/20 of that)"
    )
    print_table(["method", "entries/s", "ratio to redis-benchmark"], rows)


if __name__ == "__main__":
    main()
