"""`telemetry consume STREAM GROUP CONSUMER`: a tail with a consumer group, JSON lines out."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import TextIO

from ingest.contract.entries import Entries, per_entry
from ingest.groups import Abort, Batch, GroupRunner
from ingest.redis.connection import connect
from ingest.runtime import stop_on_signals
from ingest.settings import Settings


def raw_fields(_entry_id: str, fields: Mapping[str, str]) -> dict[str, str]:
    """Any stream's entries are acceptable here: there is no contract to check."""
    return dict(fields)


class PrintEntries:
    acknowledges = False

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, batch: Batch[Entries[dict[str, str]]]) -> None:
        lines = [
            json.dumps({"stream": batch.stream, "id": e.id, "fields": e.value}) + "\n"
            for e in batch.entries
        ]
        try:
            self.out.writelines(lines)
            # Flushed before the runner acknowledges: what is acknowledged has been printed.
            self.out.flush()
        except BrokenPipeError as exc:
            raise Abort("output closed") from exc


def run_consume(
    settings: Settings, stream: str, group: str, consumer: str, *, drain: bool, start_id: str
) -> None:
    runner = GroupRunner(
        connect(settings),
        settings,
        group,
        consumer,
        PrintEntries(sys.stdout),
        per_entry(raw_fields),
        stream=stream,
        start_id=start_id,
    )
    runner.run(stop_on_signals(), drain=drain)
