"""What a consumer group runner hands its handler, and what a handler may raise or offer."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from ingest.contract.entries import D, Decoded
from ingest.errors import IngestError

D_contra = TypeVar("D_contra", bound=Decoded, contravariant=True)


class Abort(IngestError):
    """Raised by a handler that cannot go on (its output is gone): the batch stays pending and
    the runner stops."""


class Deferred(IngestError):
    """Raised by a handler that must let older entries go first (it settles entries in stream
    order): the batch stays pending with this consumer and the runner offers it again shortly,
    reading nothing new meanwhile. Not a failure: it counts towards no dead-lettering."""


@dataclass(frozen=True)
class Batch(Generic[D]):
    stream: str
    group: str
    consumer: str
    entries: D
    # For entries this consumer read as new: the group's hand-over count when it read them
    # (see `StreamKeys.handovers`). While the count is unchanged, no other consumer took them
    # and this one did not re-read them. None for entries delivered before (claimed, re-read).
    handovers: int | None = None

    @property
    def ids(self) -> list[str]:
        return self.entries.ids


class BatchHandler(Protocol[D_contra]):  # type: ignore[misc]
    """Processes a batch. Raising leaves the batch pending; it is retried and, entry by entry,
    dead-lettered after `max_deliveries`. A handler whose `acknowledges` is True XACKs the
    entries itself, atomically with its effects; otherwise the runner XACKs after it returns."""

    acknowledges: bool

    def __call__(self, batch: Batch[D_contra]) -> None: ...


class PreparingHandler(ABC, Generic[D]):
    """A handler whose `prepare` does all its work but the writes, and returns the call that
    makes them (and acknowledges). While a backlog waits the runner runs that call in a second
    thread while it decodes and prepares the next batch, so Redis and Python work at the same
    time. The call must not touch state `prepare` reads without replacing it whole.

    A handler takes this part by subclassing, so that a misspelt method is an error when it is
    made, not a feature silently off."""

    acknowledges: bool

    @abstractmethod
    def __call__(self, batch: Batch[D]) -> None: ...

    @abstractmethod
    def prepare(self, batch: Batch[D]) -> Callable[[], None]: ...


class UpkeepingHandler(ABC):
    """A handler with work of its own beside the batches (such as rolling up what they wrote);
    taken by subclassing, as PreparingHandler is."""

    @abstractmethod
    def upkeep(self, stop: threading.Event) -> None:
        """Runs in a thread of its own while the runner runs, until `stop` is set."""

    @abstractmethod
    def drained(self) -> None:
        """Called once a drain has processed everything, before `run` returns."""


class DeadEntry(NamedTuple):
    """An entry to dead-letter: its ID, why, how often it was delivered, its fields."""

    entry_id: str
    reason: str
    deliveries: int
    fields: Mapping[str, str]


@dataclass
class RunnerStats:
    processed: int = 0
    dead_lettered: int = 0
    trimmed: int = 0
    claimed: int = 0
    handler_errors: int = 0
    redis_outages: int = 0
    recovered: int = 0
