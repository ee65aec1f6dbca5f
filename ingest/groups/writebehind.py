"""Write-behind for a handler that prepares a batch apart from writing it: the batch prepared
last is written in a second thread while the runner reads, decodes and prepares the next, so
Redis and Python work at the same time."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic

from ingest.contract.entries import D


@dataclass(frozen=True)
class Writing(Generic[D]):
    """A prepared batch whose write is under way."""

    entries: D
    future: Future[None]


class WriteBehind(Generic[D]):
    def __init__(self, name: str) -> None:
        self._name = name
        # A batch prepared and not yet written, and the call that writes it.
        self._prepared: tuple[D, Callable[[], None]] | None = None
        self._thread: ThreadPoolExecutor | None = None

    @property
    def holding(self) -> bool:
        return self._prepared is not None

    def hold(self, entries: D, write: Callable[[], None]) -> None:
        assert self._prepared is None
        self._prepared = (entries, write)

    def drop(self) -> None:
        """Forget the batch prepared: its entries stay pending, to be re-read."""
        self._prepared = None

    def start(self) -> Writing[D] | None:
        """Start writing the batch prepared, if any, in the writer thread."""
        if self._prepared is None:
            return None
        entries, write = self._prepared
        self._prepared = None
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self._name}-writer")
        return Writing(entries, self._thread.submit(write))

    def shutdown(self) -> None:
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None
