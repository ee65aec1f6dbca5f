"""What each durability mode costs writers and the bridge, against a Redis without persistence.

    python -m bench.durability [--entries N] [--messages M] [--rounds R]

Three private Redis servers run side by side: no append-only file (the reference), appendfsync
everysec (TELEMETRY_DURABILITY=everysec) and appendfsync always (=always). Rounds alternate the
servers so they share the machine's conditions. Writers: the stream writer writing N 6-field
readings in batches of 1,000 (a simulator tick, a bridge burst) and of 10 (a trickle). Bridge:
one bridge draining a backlog of M QoS 1 messages from its session, to the last entry in Redis.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import redis

from bench.bridge import Setup, bridges, queue_backlog
from bench.common import print_table
from bench.writer import FIELDS, MAXLEN, timed
from ingest.redis.writer import StreamWriter
from telemetry.localserver import LocalMosquitto, LocalRedis

MODES = {
    "no append-only file (reference)": None,
    "everysec": "everysec",
    "always": "always",
}


@contextmanager
def servers() -> Iterator[dict[str, LocalRedis]]:
    with ExitStack() as stack:
        started = {}
        for name, fsync in MODES.items():
            server = LocalRedis(appendonly=fsync is not None, appendfsync=fsync or "everysec")
            server.start()
            stack.callback(server.close)
            started[name] = server
        yield started


def writer_run(url: str, fsync: str | None, batch: int) -> Callable[[int], None]:
    client = redis.Redis.from_url(url, decode_responses=True)

    def write(entries: int) -> None:
        writer = StreamWriter(client, "bench:durability", MAXLEN, batch_size=batch,
                              durability=fsync)  # fmt: skip
        for _ in range(entries):
            writer.add(dict(FIELDS))
        writer.flush()

    return write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[tuple[str, str], list[float]] = {}
    broker = LocalMosquitto()
    broker.start()
    try:
        with servers() as running:
            for r in range(args.rounds):
                for name, server in running.items():
                    fsync = MODES[name]
                    client = redis.Redis.from_url(server.url)
                    for batch in (1000, 10):
                        client.flushall()
                        entries = args.entries if batch == 1000 else args.entries // 20
                        rates.setdefault((f"writer, batch {batch}", name), []).append(
                            timed(entries, writer_run(server.url, fsync, batch))
                        )
                    setup = Setup(3)
                    bridge = f"bridge-{r}-{fsync}"
                    queue_backlog(broker, setup, [bridge], args.messages)
                    rates.setdefault(("bridge, QoS 1 backlog", name), []).append(
                        bridges(
                            broker,
                            server.url,
                            setup,
                            [bridge],
                            args.messages,
                            TELEMETRY_DURABILITY=fsync or "everysec",
                        )
                    )
    finally:
        broker.close()
    rows = []
    for (work, name), values in rates.items():
        reference = statistics.median(rates[(work, "no append-only file (reference)")])
        median = statistics.median(values)
        rows.append((work, name, f"{median:,.0f}", f"{median / reference:.2f}"))
    print(
        f"median of {args.rounds} rounds; writer: {args.entries:,} readings at batch 1000, "
        f"1/20 of that at batch 10; bridge: {args.messages:,} messages"
    )
    print_table(["work", "Redis persistence", "per second", "ratio to no file"], rows)


if __name__ == "__main__":
    main()
