"""Consumer groups: a runner that takes a stream's entries to a batch handler and loses nothing
(`runner`), the consumer's work in Redis (`consumer`), and what a handler is given and may raise
(`batch`)."""

from ingest.groups.batch import (
    Abort,
    Batch,
    BatchHandler,
    DeadEntry,
    Deferred,
    PreparingHandler,
    RunnerStats,
    UpkeepingHandler,
)
from ingest.groups.runner import GroupRunner

__all__ = [
    "Abort",
    "Batch",
    "BatchHandler",
    "DeadEntry",
    "Deferred",
    "GroupRunner",
    "PreparingHandler",
    "RunnerStats",
    "UpkeepingHandler",
]
