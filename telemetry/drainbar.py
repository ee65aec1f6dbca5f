"""A progress bar while a worker drains its group: the entries left (unread, or read and not
acknowledged) on every shard it serves, read from Redis twice a second, on a terminal only."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from ingest.backlog import largest_backlog
from ingest.redis.connection import connect
from ingest.redis.errors import redis_errors
from ingest.shards import Shard
from telemetry.progress import progress_bar

POLL_S = 0.5


def entries_left(clients: Sequence[tuple[redis.Redis, str]], group: str) -> int:
    left = 0
    for client, stream in clients:
        with redis_errors():
            try:
                groups = client.xinfo_groups(stream)
            except redis.ResponseError:  # no stream yet
                continue
        backlog = largest_backlog([found for found in groups if found["name"] == group])
        if backlog is None:
            # The worker makes its group at the start of the stream: all of it is left.
            with redis_errors():
                left += int(client.xlen(stream))
        else:
            left += backlog.entries
    return left


@contextmanager
def drain_bar(group: str, served: Sequence[Shard]) -> Iterator[None]:
    if not sys.stderr.isatty():
        yield
        return
    clients = [(connect(shard.settings), shard.stream) for shard in served]
    first = entries_left(clients, group)
    stop = threading.Event()
    with progress_bar(f"drain {group}", first) as bar:
        done = 0

        def update() -> None:
            nonlocal done
            now_done = max(done, first - entries_left(clients, group))
            bar.advance(now_done - done)
            done = now_done

        def follow() -> None:
            while not stop.wait(POLL_S):
                update()

        following = threading.Thread(target=follow, name="drain-bar", daemon=True)
        following.start()
        try:
            yield
        finally:
            stop.set()
            following.join(timeout=2)
            update()
