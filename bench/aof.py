"""How often Redis forks to rewrite its append-only file under a capped stream: Redis's default
rewrite thresholds against the ones `telemetry up` and compose use.

    python -m bench.aof [--readings N] [--maxlen M]

Both servers take the same readings in the same batches, interleaved: 6-field readings written
with `XADD MAXLEN ~ M`, so the dataset stops growing once the stream is full while the file
grows with every write.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from typing import Any

import redis

from bench.common import print_table
from bench.writer import FIELDS
from ingest.redis.writer import StreamWriter
from telemetry.localserver import AOF_REWRITE_SETTINGS, LocalRedis

BATCH = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=3_000_000)
    parser.add_argument("--maxlen", type=int, default=500_000)
    args = parser.parse_args()
    with ExitStack() as stack:
        clients: dict[str, redis.Redis] = {}
        for name in ("Redis defaults (100 %, 64 MiB)", "telemetry (300 %, 256 MiB)"):
            server = LocalRedis(appendonly=True)
            server.start()
            stack.callback(server.close)
            clients[name] = redis.Redis.from_url(server.url, decode_responses=True)
        reference = next(iter(clients))
        clients[reference].config_set("auto-aof-rewrite-percentage", "100")
        clients[reference].config_set("auto-aof-rewrite-min-size", "64mb")
        writers = {
            name: StreamWriter(client, "app:event", args.maxlen, batch_size=BATCH)
            for name, client in clients.items()
        }
        started = time.monotonic()
        for written in range(0, args.readings, BATCH):
            for writer in writers.values():
                writer.write([dict(FIELDS)] * BATCH)
            if written % 500_000 == 0:
                print(f"{written:,} readings written ({time.monotonic() - started:.0f} s)")
        rows = [row(name, client) for name, client in clients.items()]
    print(
        f"{args.readings:,} readings with XADD MAXLEN ~ {args.maxlen:,}; "
        f"telemetry's settings: {' '.join(AOF_REWRITE_SETTINGS)}"
    )
    print_table(
        ["rewrite thresholds", "rewrites", "forks", "dataset MiB", "file MiB (last base + growth)"],
        rows,
    )


def row(name: str, client: redis.Redis) -> tuple[str, ...]:
    persistence: dict[str, Any] = client.info("persistence")
    stats: dict[str, Any] = client.info("stats")
    memory: dict[str, Any] = client.info("memory")
    mib = 1024 * 1024
    return (
        name,
        str(persistence["aof_rewrites"]),
        str(stats["total_forks"]),
        f"{int(memory['used_memory_dataset']) / mib:.0f}",
        f"{int(persistence['aof_current_size']) / mib:.0f}",
    )


if __name__ == "__main__":
    main()
