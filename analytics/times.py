"""Times as people write them: `now`, a time ago (`1h`), or ISO 8601; as programs write them:
milliseconds since the epoch (Grafana's `${__from}`); and back to ISO 8601."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

from ingest.durations import looks_like_duration, parse_duration_ms


def parse_time_ms(text: str, now_ms: int) -> int:
    """`now`, a duration meaning that long ago (`1h`), ISO 8601 (UTC unless it says), or
    milliseconds since the epoch (all digits, such as 1764979200000)."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text.isdigit() and len(text) <= 16:
        return int(text)
    if looks_like_duration(text):
        return now_ms - parse_duration_ms(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            "expected now, a time ago such as 1h, ISO 8601 such as 2026-11-23T12:00:00Z, or "
            f"epoch milliseconds, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso(ms: int, tz: tzinfo | None = None) -> str:
    return datetime.fromtimestamp(ms / 1000, tz or UTC).isoformat(timespec="milliseconds")
