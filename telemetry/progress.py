"""Progress bars for long work, on a terminal only (a log or a pipe gets the closing line)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class Bar:
    """One task's progress: `advance` by units done; `note` sets the text beside it."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, done: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, done)

    def note(self, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, note=text)


@contextmanager
def progress_bar(description: str, total: float | None, *, in_bytes: bool = False) -> Iterator[Bar]:
    if not sys.stderr.isatty():
        yield Bar(None, None)
        return
    # rich loads only where a bar is drawn: every other command starts sooner.
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    counted: Any = TransferSpeedColumn() if in_bytes else MofNCompleteColumn()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               counted, TimeRemainingColumn(), TextColumn("{task.fields[note]}")]  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        yield Bar(progress, progress.add_task(description, total=total, note=""))
