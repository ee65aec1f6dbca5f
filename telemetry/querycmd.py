"""`telemetry query` and `telemetry sensors`: answers as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from analytics import query
from analytics.errors import QueryError
from analytics.fleet import fleet_top
from analytics.forget import forget_sensors, idle_sensors
from analytics.groupby import group_by, selected_sensors
from analytics.query import Stats, Store, Stores
from analytics.times import iso, parse_time_ms
from ingest.devices import DeviceRegistry
from ingest.durations import parse_duration_ms
from ingest.keys import AlertKeys
from ingest.labels import Selector, parse_selector
from ingest.runtime import CommandLineError
from ingest.settings import Settings
from ingest.shards import shard_for, shard_of, shards

STAT_COLUMNS = ["count", "mean", "min", "max", "std", "p50", "p90", "p95", "p99", "first", "last"]


def zone(name: str | None) -> tzinfo | None:
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CommandLineError(f"--tz: unknown time zone {name!r}") from None


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _stats_row(stats: Stats, tz: tzinfo | None) -> dict[str, str]:
    row = {"start": iso(stats.start_ms, tz), "end": iso(stats.end_ms, tz)}
    row.update({c: str(stats.count) if c == "count" else _number(getattr(stats, c))
                for c in STAT_COLUMNS})  # fmt: skip
    return row


def render(rows: Sequence[dict[str, str]], output_format: str, data: Any) -> str:
    if output_format == "json":
        return json.dumps(data, indent=2)
    if not rows:
        return "no data"
    headers = list(rows[0])
    if output_format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, headers, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    lines = ["  ".join(h.rjust(widths[h]) for h in headers)]
    lines += ["  ".join(r[h].rjust(widths[h]) for h in headers) for r in rows]
    return "\n".join(lines)


def parse_flag(kind: str, flag: str, text: str, now: int) -> int:
    """A `time` (ISO 8601, a time ago, epoch ms) or a `duration` flag, or one line naming the
    flag and what to fix."""
    try:
        return parse_duration_ms(text) if kind == "duration" else parse_time_ms(text, now)
    except ValueError as exc:
        raise CommandLineError(f"{flag}: {exc}") from None


def sensor_query(
    settings: Settings,
    sensor_id: str,
    metric: str | None,
    tier: str | None,
    since: str,
    until: str,
    last: str | None,
    output_format: str,
    tz_name: str | None,
) -> str:
    store = Store.from_settings(shard_for(settings, sensor_id).settings)
    tz = zone(tz_name)
    info = query.sensor_info(store, sensor_id)
    if info is None:
        raise CommandLineError(f"unknown sensor {sensor_id!r} (see `telemetry sensors`)")
    metrics = [metric] if metric else info.metrics
    now = query.now_ms()
    try:
        if last is not None:
            span = parse_flag("duration", "--last", last, now)
            windows = [
                query.rolling(store, sensor_id, m, span, at_ms=now, tier_name=tier) for m in metrics
            ]
            rows = []
            for w in windows:
                if w.stats is None:
                    continue
                row = {"metric": w.metric, "tier": w.tier, "buckets": str(w.buckets)}
                row.update(_stats_row(w.stats, tz))
                row["edges"] = _edges(w)
                rows.append(row)
            return render(rows, output_format, [asdict(w) for w in windows])
        start = parse_flag("time", "--since", since, now)
        end = parse_flag("time", "--until", until, now)
        if start >= end:
            raise CommandLineError("--since must be before --until")
        chosen = tier or query.choose_tier(store.tiers, end - start).name
        rows, data = [], {}
        for m in metrics:
            found = query.buckets(store, sensor_id, m, chosen, start, end)
            data[m] = [asdict(b) for b in found]
            rows += [{"metric": m, "tier": chosen, **_stats_row(b, tz)} for b in found]
        return render(rows, output_format, data)
    except QueryError as exc:
        raise CommandLineError(str(exc)) from None


def _edges(window: query.Window) -> str:
    parts = []
    if window.partial_first_bucket:
        parts.append("first bucket starts before the window")
    if window.partial_last_bucket:
        parts.append("last bucket ends after the window")
    return "; ".join(parts) or "exact"


def selector_of(text: str | None) -> Selector | None:
    if text is None:
        return None
    try:
        return parse_selector(text)
    except ValueError as exc:
        raise CommandLineError(f"--where: {exc}") from None


def fleet_query(
    settings: Settings, metric: str | None, top: int, by: str, last: str, until: str,
    output_format: str, tz_name: str | None, where: str | None = None,
) -> str:  # fmt: skip
    if metric is None:
        raise CommandLineError("--fleet needs --metric")
    tz = zone(tz_name)
    stores = Stores.from_settings(settings)
    selector = selector_of(where)
    among = None
    if selector is not None:
        among = set(selected_sensors(stores, DeviceRegistry(settings), selector))
    now = query.now_ms()
    try:
        span = parse_flag("duration", "--last", last, now)
        ranked = fleet_top(
            stores, metric, by, span, top, at_ms=parse_flag("time", "--until", until, now),
            among=among,
        )  # fmt: skip
    except QueryError as exc:
        raise CommandLineError(str(exc)) from None
    rows = []
    for rank, r in enumerate(ranked, start=1):
        assert r.window.stats is not None
        row = {"rank": str(rank), "sensor": r.sensor_id, by: _number(r.value)}
        row.update(_stats_row(r.window.stats, tz))
        rows.append(row)
    return render(rows, output_format, [asdict(r) for r in ranked])


def group_query(
    settings: Settings, metric: str | None, label: str, last: str, until: str,
    output_format: str, where: str | None,
) -> str:  # fmt: skip
    """`telemetry query --fleet --group-by LABEL`: one row per value of the label."""
    if metric is None:
        raise CommandLineError("--group-by needs --metric")
    now = query.now_ms()
    try:
        groups = group_by(
            Stores.from_settings(settings), DeviceRegistry(settings), metric, label,
            parse_flag("duration", "--last", last, now), selector=selector_of(where),
            at_ms=parse_flag("time", "--until", until, now),
        )  # fmt: skip
    except QueryError as exc:
        raise CommandLineError(str(exc)) from None
    rows = []
    for group in groups:
        if group.stats is None:
            continue
        row = {label: "(none)" if group.value is None else group.value,
               "sensors": str(group.sensors), "tier": group.tier}  # fmt: skip
        row.update({c: str(group.stats.count) if c == "count" else _number(getattr(group.stats, c))
                    for c in STAT_COLUMNS if c not in ("first", "last")})  # fmt: skip
        rows.append(row)
    return render(rows, output_format, [asdict(g) for g in groups])


def sensors_listing(settings: Settings, output_format: str, tz_name: str | None) -> str:
    tz = zone(tz_name)
    infos = query.list_sensors(Stores.from_settings(settings))
    rows = [
        {
            "sensor": i.sensor_id,
            "last_seen": iso(i.last_seen_ms, tz),
            "metrics": ",".join(i.metrics),
        }
        for i in infos
    ]
    return render(rows, output_format, [asdict(i) for i in infos])


def forget_command(settings: Settings, sensor_ids: Sequence[str], idle_for: str | None) -> str:
    """`telemetry sensors forget`: the sensors named and, with `idle_for`, the idle ones."""
    if not sensor_ids and idle_for is None:
        raise CommandLineError("name the sensors to forget, or give --idle-for")
    idle_ms = None
    if idle_for is not None:
        try:
            idle_ms = parse_duration_ms(idle_for)
        except ValueError as exc:
            raise CommandLineError(f"--idle-for: {exc}") from None
    known = 0
    every = shards(settings)
    for shard in every:
        store = Store.from_settings(shard.settings)
        chosen = [s for s in sensor_ids if shard_of(s, len(every)) == shard.index]
        if idle_ms is not None:
            chosen += idle_sensors(store.client, store.keys, idle_ms, query.now_ms())
        alert_keys = AlertKeys(shard.settings.alerts_stream)
        chosen = list(dict.fromkeys(chosen))
        known += forget_sensors(store.client, store.keys, alert_keys, store.tiers, chosen,
                                query.now_ms())  # fmt: skip
        DeviceRegistry(settings).forget(chosen)
    return f"forgot {known} sensors"
