"""`telemetry export` and `telemetry import`: raw readings out to a file (the archive and the
stream together) and in from one (a backfill)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from analytics.archive import EXPORT_FORMATS
from analytics.archive.export import Output, sources
from analytics.query import now_ms
from ingest.runtime import CommandLineError, stop_on_signals
from ingest.settings import Settings
from producers.backfill import Backfill, detect_format, parquet_rows, records
from telemetry.progress import progress_bar
from telemetry.querycmd import parse_flag


def export_command(
    settings: Settings, since: str, until: str, sensor_glob: str, output_format: str,
    output: Path | None,
) -> str:  # fmt: skip
    now = now_ms()
    since_ms = parse_flag("time", "--since", since, now)
    until_ms = parse_flag("time", "--until", until, now)
    if since_ms >= until_ms:
        raise CommandLineError("--since must be before --until")
    if output_format not in EXPORT_FORMATS:
        raise CommandLineError(f"--format: one of {', '.join(EXPORT_FORMATS)}")
    path = output or Path(f"readings.{output_format}")
    found = sources(settings, since_ms, until_ms, sensor_glob)
    out = Output(path, output_format)
    try:
        with progress_bar("export", len(found)) as bar:
            for source in found:
                bar.note(Path(source.name).name)
                try:
                    rows = source.read()
                except FileNotFoundError:
                    raise CommandLineError(f"{source.name} is gone (merged into a larger "
                                           "file while this export ran?); run it again"
                                           ) from None  # fmt: skip
                except (OSError, pa.ArrowException) as exc:
                    raise CommandLineError(f"{source.name} cannot be read ({exc}); move it "
                                           "aside to export the rest") from None  # fmt: skip
                out.write(rows)
                bar.advance(1)
    finally:
        out.close()
    return f"{out.readings} readings ({out.rows} values) from {len(found)} sources to {path}"


def import_command(
    settings: Settings, path: Path, file_format: str | None, sensor_tag: str, precision: str
) -> tuple[str, int]:
    if not path.is_file():
        raise CommandLineError(f"{path}: no such file")
    chosen = detect_format(path, file_format)
    stop = stop_on_signals()
    backfill = Backfill(settings, str(path), stop)
    total = parquet_rows(path) if chosen == "parquet" else path.stat().st_size
    try:
        with progress_bar(f"import {path.name}", total, in_bytes=chosen != "parquet") as bar:
            counts = backfill.run(records(path, chosen, bar.advance, sensor_tag=sensor_tag,
                                          precision=precision))  # fmt: skip
    finally:
        backfill.close()
    lines = [f"{counts.written} readings written, {counts.refused} refused (dead-lettered with "
             f"their line), {counts.dropped_fields} fields dropped"]  # fmt: skip
    if counts.waits:
        lines.append(f"waited {counts.waits} times for the consumer groups to catch up")
    lines += [f"  {where}" for where in counts.first_refusals]
    if stop.is_set():
        lines.append("stopped before the end of the file")
    return "\n".join(lines), 1 if counts.refused or stop.is_set() else 0
