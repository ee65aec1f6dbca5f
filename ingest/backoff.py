"""Capped exponential backoff with full jitter, for reconnect loops."""

from __future__ import annotations

import random

from ingest.errors import StreamFull

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
