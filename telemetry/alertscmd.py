"""`telemetry alerts`: open alerts or recent alert changes, as a table or JSON."""

from __future__ import annotations

from dataclasses import asdict

from analytics.alerts.listing import alert_sources, list_alerts
from analytics.query import now_ms
from analytics.times import iso, parse_time_ms
from ingest.runtime import CommandLineError
from ingest.settings import Settings
from telemetry.querycmd import render, zone


def alerts_listing(
    settings: Settings,
    open_only: bool,
    sensor_glob: str,
    since: str | None,
    output_format: str,
    tz_name: str | None,
) -> str:
    tz = zone(tz_name)
    since_ms = None
    if since is not None:
        try:
            since_ms = parse_time_ms(since, now_ms())
        except ValueError as exc:
            raise CommandLineError(f"--since: {exc}") from None
    found = list_alerts(
        alert_sources(settings),
        open_only=open_only,
        sensor_glob=sensor_glob,
        since_ms=since_ms,
    )
    rows = [
        {
            "time": iso(a.ts_ms, tz),
            "sensor": a.sensor_id,
            "rule": a.rule,
            "severity": a.severity,
            "state": a.state,
            "message": a.message,
        }
        for a in found
    ]
    if not rows and output_format == "table":
        return "no open alerts" if open_only else "no alert changes"
    return render(rows, output_format, [asdict(a) for a in found])
