"""Layers that lint-imports cannot see: it knows which packages import redis-py, not which of
redis-py's internals they touch."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

# What the fast paths use beyond redis-py's documented API (see ingest/redis/internals.py).
INTERNALS = re.compile(
    r"\._sock\b|\._parser\b|send_packed_command|pack_commands|read_response|get_connection"
    r"|response_callbacks|CaseInsensitiveDict|(?<![.\w])redis\.(?:connection|_parsers)"
    r"|import hiredis"
)
PACKAGES = ("ingest", "analytics", "producers", "simulator", "telemetry")
REDIS_PACKAGE = ROOT / "ingest" / "redis"


def test_only_the_redis_package_touches_redis_py_internals() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if REDIS_PACKAGE not in path.parents
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if INTERNALS.search(line.split("#", 1)[0])
    ]
    assert found == [], "redis-py internals outside ingest/redis:\n" + "\n".join(found)


def test_the_check_finds_an_internal_where_one_is_used(tmp_path: Path) -> None:
    sample = "value = connection._sock\nreply = conn.read_response()\n"
    assert len([line for line in sample.splitlines() if INTERNALS.search(line)]) == 2
