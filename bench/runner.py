"""Group runner throughput against a bare redis-py loop of XREADGROUP COUNT 2000 + XACK.

    python -m bench.runner [--entries N] [--rounds R]

One stream of simulator-shaped readings; each method reads all of it with its own consumer
group, so they read the same data; rounds alternate the methods.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from bench.common import print_table, ratio_rows, redis_for_bench
from ingest.contract.columns import decode_columns
from ingest.contract.entries import BatchDecoder, ReplyDecoder, per_entry
from ingest.contract.replycolumns import decode_layouts
from ingest.groups import Batch, GroupRunner
from ingest.redis.connection import connect
from ingest.redis.writer import StreamWriter
from ingest.settings import Settings

STREAM = "app:event"


class DoNothing:
    acknowledges = False

    def __call__(self, batch: Batch[Any]) -> None:
        pass


def raw(_entry_id: str, fields: Mapping[str, str]) -> Mapping[str, str]:
    return fields


def fill(client: redis.Redis, entries: int) -> None:
    writer = StreamWriter(client, STREAM, entries * 2, batch_size=2000)
    for i in range(entries):
        writer.add(
            {
                "sensor_id": f"dev-{i % 1000:04d}",
                "ts": str(1763900000000 + i),
                "seq": str(i // 1000),
                "temp": "21.53",
                "humidity": "0.412",
                "battery_v": "3.702",
            }
        )
    writer.flush()


def bare_loop(client: redis.Redis, group: str) -> int:
    client.xgroup_create(STREAM, group, "0")
    read = 0
    while True:
        reply: Any = client.xreadgroup(group, "c1", {STREAM: ">"}, count=2000)
        if not reply:
            return read
        ids = [entry_id for entry_id, _ in reply[0][1]]
        client.xack(STREAM, group, *ids)
        read += len(ids)


def with_runner(
    settings: Settings,
    group: str,
    decode: BatchDecoder[Any],
    decode_replies: ReplyDecoder[Any] | None = None,
) -> int:
    runner = GroupRunner(
        connect(settings), settings, group, "c1", DoNothing(), decode,
        decode_replies=decode_replies,
    )  # fmt: skip
    return runner.run(threading.Event(), drain=True).processed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with redis_for_bench() as url:
        settings = Settings(redis_url=url, read_batch=2000)
        client = redis.Redis.from_url(url, decode_responses=True)
        client.flushall()
        fill(client, args.entries)
        methods: dict[str, Callable[[str], int]] = {
            "bare XREADGROUP COUNT 2000 + XACK (reference)": lambda g: bare_loop(client, g),
            "GroupRunner, handler does nothing": lambda g: with_runner(settings, g, per_entry(raw)),
            "GroupRunner, readings decoded, handler does nothing": (
                lambda g: with_runner(settings, g, decode_columns)
            ),
            "GroupRunner, readings decoded from the replies' bytes": (
                lambda g: with_runner(settings, g, decode_columns, decode_layouts)
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in methods}
        for round_no in range(args.rounds):
            for i, (name, run) in enumerate(methods.items()):
                start = time.perf_counter()
                read = run(f"g{round_no}-{i}")
                results[name].append(read / (time.perf_counter() - start))
                assert read == args.entries, (name, read)
    rows = ratio_rows(results, "bare XREADGROUP COUNT 2000 + XACK (reference)")
    print(f"{args.entries:,} six-field readings, one consumer; median of {args.rounds} rounds")
    print_table(["method", "entries/s", "ratio to bare loop"], rows)


if __name__ == "__main__":
    main()
