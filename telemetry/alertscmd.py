"""`telemetry alerts`: open alerts or recent alert changes, as a table or JSON; acknowledging
alerts and silencing them for maintenance; `telemetry rules check`."""

from __future__ import annotations

import getpass
import os
from dataclasses import asdict

from analytics.alerts.acknowledge import acknowledge
from analytics.alerts.config import load_config
from analytics.alerts.listing import alert_sources, list_alerts, sensor_source
from analytics.alerts.silences import (
    active_silences,
    add_silence,
    new_silence,
    remove_silence,
    silences_home,
)
from analytics.query import now_ms
from analytics.times import iso
from ingest.runtime import CommandLineError
from ingest.settings import Settings
from telemetry.querycmd import parse_flag, render, zone


def alerts_listing(
    settings: Settings,
    open_only: bool,
    sensor_glob: str,
    since: str | None,
    output_format: str,
    tz_name: str | None,
) -> str:
    tz = zone(tz_name)
    since_ms = None if since is None else parse_flag("time", "--since", since, now_ms())
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


def acknowledge_command(
    settings: Settings, sensor_id: str, rule: str, by: str | None, comment: str
) -> str:
    client, keys = sensor_source(settings, alert_sources(settings), sensor_id)
    entry = acknowledge(client, keys, sensor_id, rule, by=by or operator_name(),
                        comment=comment, now_ms=now_ms(),
                        maxlen=settings.alerts_maxlen)  # fmt: skip
    if entry is None:
        raise CommandLineError(f"no open alert of rule {rule!r} on sensor {sensor_id!r} "
                               "(telemetry alerts --open lists them)")  # fmt: skip
    return f"acknowledged {rule} on {sensor_id} ({entry})"


def silence_command(
    settings: Settings, sensors: str, rules: str, labels: str, duration: str,
    by: str | None, comment: str,
) -> str:  # fmt: skip
    duration_ms = parse_flag("duration", "--for", duration, now_ms())
    silence = new_silence(sensors=sensors, rules=rules, labels=labels, duration_ms=duration_ms,
                          by=by or operator_name(), comment=comment, now_ms=now_ms())  # fmt: skip
    client, keys = silences_home(alert_sources(settings))
    add_silence(client, keys, silence, settings.alerts_maxlen)
    return f"silence {silence.id}: until {iso(silence.ends_ms)}"


def silences_listing(settings: Settings, output_format: str, tz_name: str | None) -> str:
    tz = zone(tz_name)
    client, keys = silences_home(alert_sources(settings))
    found = active_silences(client, keys, now_ms())
    rows = [{"id": s.id, "sensors": s.sensors, "rules": s.rules, "labels": str(s.labels),
             "until": iso(s.ends_ms, tz), "by": s.by, "comment": s.comment}
            for s in found]  # fmt: skip
    if not rows and output_format == "table":
        return "no silences"
    return render(rows, output_format, [s.as_dict() for s in found])


def unsilence_command(settings: Settings, silence_id: str, by: str | None) -> str:
    client, keys = silences_home(alert_sources(settings))
    if not remove_silence(client, keys, silence_id, by or operator_name(),
                          settings.alerts_maxlen, now_ms()):  # fmt: skip
        raise CommandLineError(f"no silence {silence_id!r} (telemetry alerts silences lists them)")
    return f"silence {silence_id} ended"


def rules_check(path: str) -> str:
    config = load_config(path)
    lines = [f"{path}: {len(config.rules)} rules, {len(config.notifications)} notify targets"]
    lines += [f"  rule {r.name}: {r.kind} {r.metric or ''} {r.limit_text} ({r.severity})"
              for r in config.rules]  # fmt: skip
    lines += [f"  notify {n.name}: {', '.join(sorted(n.states))} of rules "
              f"{', '.join(n.rules)}, severities {', '.join(sorted(n.severities))}"
              for n in config.notifications]  # fmt: skip
    return "\n".join(lines)


def operator_name() -> str:
    return os.environ.get("USER") or getpass.getuser()
