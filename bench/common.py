"""What the benchmarks share: a private Redis and a table printer."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from telemetry.localserver import LocalRedis


@contextmanager
def redis_for_bench() -> Iterator[str]:
    """REDIS_URL when set, else a private redis-server that nothing else uses."""
    if "REDIS_URL" in os.environ:
        yield os.environ["REDIS_URL"]
        return
    server = LocalRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


def start_telemetry(args: list[str], url: str, **env: str) -> subprocess.Popen[bytes]:
    """A `telemetry` subcommand against the bench's Redis, quiet but for warnings."""
    return subprocess.Popen(
        [sys.executable, "-m", "telemetry", *args],
        env={**os.environ, "REDIS_URL": url, "TELEMETRY_LOG_LEVEL": "WARNING", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines))


def ratio_rows(
    results: Mapping[str, Sequence[float]], reference: str
) -> list[tuple[str, str, str]]:
    """Median rate of each method and its ratio to the reference's median."""
    base = statistics.median(results[reference])
    return [
        (name, f"{statistics.median(rates):,.0f}", f"{statistics.median(rates) / base:.2f}")
        for name, rates in results.items()
    ]
