"""Durations as people write them (`10s`, `5m`, `1h30m`, `7d`) and window-tier specs."""

from __future__ import annotations

import re

_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d|w)", re.ASCII)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def looks_like_duration(text: str) -> bool:
    return _DURATION.match(text.strip()) is not None


def parse_duration_ms(text: str) -> int:
    """`90s`, `5m`, `1h30m`, `7d` -> milliseconds; ValueError says what is wrong."""
    text = text.strip()
    pos, total = 0, 0
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if match is None:
            break
        total += int(match.group(1)) * _UNIT_MS[match.group(2)]
        pos = match.end()
    if pos != len(text) or total <= 0:
        raise ValueError(f"expected a duration such as 30s, 5m, 6h or 7d, got {text!r}")
    return total


def format_duration(ms: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def parse_tier_spec(text: str) -> list[tuple[int, int]]:
    """`10s:6h,1m:7d,1h:90d` -> [(bucket_ms, retention_ms)], finest first."""
    tiers = []
    for part in text.split(","):
        size, sep, keep = part.strip().partition(":")
        if not sep:
            raise ValueError(f"expected BUCKET:RETENTION such as 1m:7d, got {part.strip()!r}")
        bucket_ms, retention_ms = parse_duration_ms(size), parse_duration_ms(keep)
        if retention_ms < bucket_ms:
            raise ValueError(f"tier {part.strip()!r} keeps less than one bucket")
        tiers.append((bucket_ms, retention_ms))
    tiers.sort()
    if len({bucket for bucket, _ in tiers}) != len(tiers):
        raise ValueError(f"tiers repeat a bucket size: {text!r}")
    # Coarse tiers are rolled up from the finest: each of its buckets must lie in one of theirs.
    finest = tiers[0][0]
    for bucket, _ in tiers[1:]:
        if bucket % finest:
            raise ValueError(
                f"tier {format_duration(bucket)} is not a whole number of the finest tier's "
                f"{format_duration(finest)} buckets"
            )
    return tiers
