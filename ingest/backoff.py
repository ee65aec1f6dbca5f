"""Capped exponential backoff with full jitter, for reconnect loops."""

from __future__ import annotations

import random


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
