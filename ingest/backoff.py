"""Capped exponential backoff with full jitter, for reconnect loops; and the loop of a writer
that waits, rather than drops what it holds, while Redis is away or the groups are behind."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from ingest.errors import RedisUnavailable, StreamFull

# How soon a writer held back by a group's backlog tries again: a group catching up frees room
# within moments, and there is no server to spare.
HELD_BACK_RETRY_S = 0.25


class Backoff:
    def __init__(self, base_s: float = 0.1, cap_s: float = 5.0) -> None:
        self._base_s = base_s
        self._cap_s = cap_s
        self._attempt = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; grows until `reset`."""
        ceiling = min(self._cap_s, self._base_s * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 30)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


def retry_delay(backoff: Backoff, failure: Exception | None) -> float:
    """How long to wait after a write failed: briefly when a group's backlog held it back,
    with backoff otherwise."""
    if isinstance(failure, StreamFull):
        backoff.reset()
        return HELD_BACK_RETRY_S
    return backoff.next_delay()


def why_writes_wait(failure: Exception) -> str:
    """One line for the log: why a writer holds what it has."""
    if isinstance(failure, StreamFull):
        return f"writes held back: {failure}"
    return f"redis unavailable ({failure})"


class Buffering(Protocol):
    """A writer that keeps what a failed flush could not write and writes it first next time."""

    def add_many(self, entries: Sequence[dict[str, str]]) -> None: ...
    def flush(self) -> object: ...


def write_waiting(
    sink: Buffering, entries: Sequence[dict[str, str]], stop: threading.Event, backoff: Backoff,
    waiting: Callable[[RedisUnavailable, int], None],
) -> int | None:  # fmt: skip
    """Add the entries and flush; while a flush fails for want of Redis or of room (the groups'
    backlog), tell `waiting` (the failure, how many so far), wait and flush again. The entries
    are added once: a failed flush keeps them. How many times it waited, or None when `stop`
    came and the flush after it failed too (the entries stay buffered)."""
    waits = 0
    try:
        sink.add_many(entries)
        sink.flush()
    except RedisUnavailable as exc:
        failure: RedisUnavailable = exc
        while True:
            waits += 1
            waiting(failure, waits)
            stopped = stop.wait(retry_delay(backoff, failure))
            try:
                sink.flush()
                break
            except RedisUnavailable as again:
                if stopped:
                    return None
                failure = again
    backoff.reset()
    return waits
