"""`telemetry status`, `telemetry storage` and `telemetry dead-letter`: what operators look at,
as text or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from analytics.footprint import measure
from analytics.tiers import parse_tiers
from ingest.deadletter import ShardedDeadLetters
from ingest.keys import StreamKeys
from ingest.redis.connection import as_text, connect
from ingest.runtime import CommandLineError
from ingest.settings import Settings
from ingest.shards import shards
from ingest.status import format_report, status_report, stream_status
from telemetry.progress import progress_bar


def show_status(settings: Settings, output_format: str) -> str:
    """The stream's status, or each shard's and their totals."""
    statuses = [
        stream_status(shard.settings, shard.stream, settings.maxlen, settings.trim_warn_ratio)
        for shard in shards(settings)
    ]
    if output_format == "json":
        return json.dumps(status_report(statuses), indent=2)
    return format_report(statuses)


def show_storage(settings: Settings, output_format: str) -> str:
    """What each metric's aggregates cost per bucket in each tier, measured in Redis (in the
    shard with the most sensors), and what a sensor-metric and the whole fleet will cost once
    every tier holds its retention."""
    tiers = parse_tiers(settings.tiers)
    measured = []
    for shard in shards(settings):
        client, keys = connect(shard.settings), StreamKeys(shard.stream)
        metrics = sorted(map(as_text, client.smembers(keys.metric_names)))
        costs = [(m, cost) for m in metrics for cost in measure(client, keys, tiers, m)]
        kept = [cost.at_full_retention(cost.tier.retention_ms) for _, cost in costs]
        measured.append((int(client.zcard(keys.sensors)), costs, kept))
    sensors = sum(count for count, _, _ in measured)
    projected = sum(count * sum(kept) for count, _, kept in measured)
    _, costs, kept = max(measured, key=lambda found: found[0])
    if output_format == "json":
        rows = [
            {
                "metric": metric,
                "tier": cost.tier.name,
                "packed_bytes_per_bucket": round(cost.bytes_per_packed_bucket, 1),
                "packed_estimated": cost.packed_estimated,
                "record_bytes_per_bucket": round(cost.bytes_per_record, 1),
                "per_sensor_metric_at_retention_bytes": round(at_retention),
            }
            for (metric, cost), at_retention in zip(costs, kept, strict=True)
        ]
        return json.dumps(
            {"sensors": sensors, "tiers": rows, "projected_bytes": round(projected)}, indent=2
        )
    if not costs:
        return f"nothing aggregated in {settings.stream} yet"
    lines = [
        f"{'metric':<16} {'tier':<6} {'packed B/bucket':>16} {'record B/bucket':>16} "
        f"{'per sensor, kept':>17}"
    ]
    for (metric, cost), at_retention in zip(costs, kept, strict=True):
        packed = ("~" if cost.packed_estimated else "") + f"{cost.bytes_per_packed_bucket:.1f}"
        lines.append(
            f"{metric:<16} {cost.tier.name:<6} {packed:>16} {cost.bytes_per_record:>16.1f} "
            f"{at_retention / 1024:>13,.0f} KiB"
        )
    lines.append(
        f"{sensors} sensors: {projected / 2**30:,.2f} GiB of aggregates once every tier holds "
        "its retention (~: estimated by packing a sample of records; fleet buckets included)"
    )
    return "\n".join(lines)


def show_dead_letters(settings: Settings, count: int, output_format: str) -> str:
    letters = ShardedDeadLetters(settings).listed(count)
    if output_format == "json":
        return json.dumps([asdict(letter) for letter in letters], indent=2)
    if not letters:
        return "no dead letters in " + ", ".join(
            StreamKeys(s.stream).dead for s in shards(settings)
        )
    lines = []
    for letter in letters:
        # A producer's dead letter (bridge, import) never was a stream entry.
        origin = f"from {letter.entry_id}" if letter.entry_id else f"from {letter.consumer}"
        lines.append(
            f"{letter.dead_id}  {origin} (group {letter.group}, "
            f"{letter.deliveries} deliveries): {letter.reason}"
        )
        lines.append(f"    fields {json.dumps(dict(letter.fields))[:300]}")
    return "\n".join(lines)


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    fixes = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandLineError(f"--set expects FIELD=VALUE, got {pair!r}")
        fixes[name] = value
    return fixes


REPLAY_BATCH = 1000


def replay_dead_letters(
    settings: Settings,
    ids: Sequence[str],
    replay_all: bool,
    set_pairs: Sequence[str],
    unset: Sequence[str],
) -> tuple[str, bool]:
    """Replay and report; the flag says whether every chosen dead letter went back."""
    if bool(ids) == replay_all:
        raise CommandLineError("give --id ID (repeatable) or --all")
    fixes = parse_assignments(set_pairs)
    letters = ShardedDeadLetters(settings)
    chosen, missing = letters.chosen(None if replay_all else ids)
    if missing:
        raise CommandLineError(f"no dead letter with ID {missing[0]}")
    # Replayed a thousand at a time, so a long replay shows its progress.
    batches = [(shard, list(shard_letters[start : start + REPLAY_BATCH]))
               for shard, shard_letters in enumerate(chosen)
               for start in range(0, len(shard_letters), REPLAY_BATCH)]  # fmt: skip
    results = []
    with progress_bar("replay", sum(len(c) for c in chosen)) as bar:
        for shard, batch in batches:
            part = [batch if i == shard else [] for i in range(len(chosen))]
            results += letters.replay(part, fixes, unset)
            bar.advance(len(batch))
    lines = []
    for result in results:
        if result.error is None:
            lines.append(f"{result.dead_id} replayed as {result.new_id}")
        else:
            lines.append(f"{result.dead_id} kept: still invalid: {result.error}")
    replayed = sum(r.error is None for r in results)
    lines.append(f"{replayed} of {len(results)} dead letters replayed onto {settings.stream}")
    return "\n".join(lines), replayed == len(results)
