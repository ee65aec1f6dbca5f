"""One worker process serving several shards: a group runner per shard, each in its own
thread (they wait on Redis, not on the CPU, most of the time)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

from ingest.groups.batch import RunnerStats
from ingest.groups.runner import GroupRunner


def run_each(
    runners: Sequence[GroupRunner[Any]], stop: threading.Event, *, drain: bool
) -> RunnerStats:
    """Run every runner until `stop` (or, with `drain`, until each has drained its shard); their
    stats summed. A runner that fails stops the others and its error is raised."""
    if len(runners) == 1:
        return runners[0].run(stop, drain=drain)
    results: list[RunnerStats] = []
    errors: list[BaseException] = []

    def serve(runner: GroupRunner[Any]) -> None:
        try:
            results.append(runner.run(stop, drain=drain))
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=serve, args=(runner,), name=f"shard-{runner.keys.stream}")
               for runner in runners]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return RunnerStats(**{
        spec.name: sum(getattr(stats, spec.name) for stats in results)
        for spec in dataclasses.fields(RunnerStats)
    })  # fmt: skip
