"""Every Redis key the system uses is named here and nowhere else.

All keys belonging to one stream share the stream's name as prefix, so a stream named with a
hash tag (`app:event:{0}`) keeps its dead letters, counters and metadata in the same cluster slot.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_STREAM = "app:event"


@dataclass(frozen=True)
class StreamKeys:
    stream: str

    @property
    def dead(self) -> str:
        """Dead-letter stream: entries no group could process, with the reason."""
        return f"{self.stream}:dead"

    @property
    def lost(self) -> str:
        """Hash group -> entries trimmed away before that group processed them."""
        return f"{self.stream}:lost"

    @property
    def meta(self) -> str:
        """Hash of facts writers publish about the stream (its MAXLEN)."""
        return f"{self.stream}:meta"
