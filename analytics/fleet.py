"""Fleet questions: the sensors ranking highest by a statistic over a window, answered from the
fleet buckets (each sensor's summary of a metric in one string per bucket) with numpy; only the
winners' windows are read in full."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analytics.errors import QueryError
from analytics.query import (
    PERCENTILE_FIELDS,
    PERCENTILES,
    Store,
    Stores,
    Window,
    choose_tier,
    now_ms,
    windows,
)
from analytics.stored import MARK_FIELDS, Mark, parse_mark, read_buckets, read_mark
from analytics.summary import REPORTS, SUMMARY, WHOLE_REPORTS
from analytics.tiers import FLEET_BUCKETS, Tier
from ingest.redis.errors import redis_errors

# Sensors whose windows a fleet question ranked by a percentile reads at a time.
FLEET_PERCENTILE_BATCH = 200
# Sensors whose packed chunks a fleet question about packed buckets reads at a time.
FLEET_PACKED_BATCH = 1000
# No fleet question reads more sensor summaries (72 bytes each) from the fleet buckets, nor more
# sensor windows of histograms, than these: it is refused, or stops, before.
FLEET_MAX_SUMMARIES = 1_000_000
FLEET_MAX_WINDOWS = 10_000
# Every report but the times, and the percentiles.
RANKINGS = (
    *(name for name in REPORTS if name == "count" or name not in WHOLE_REPORTS),
    *PERCENTILE_FIELDS,
)


@dataclass(frozen=True)
class Ranked:
    sensor_id: str
    value: float
    window: Window


def fleet_top(
    stores: Stores,
    metric: str,
    by: str,
    last_ms: int,
    n: int,
    *,
    at_ms: int | None = None,
    among: Collection[str] | None = None,
) -> list[Ranked]:
    """The n sensors with the highest `by` (mean, max, p99, ...) over the last `last_ms`, of
    every shard (each shard's n best, merged); only those `among` when given."""
    to_ms = now_ms() if at_ms is None else at_ms
    found = [ranked for store in stores.every
             for ranked in _shard_top(store, metric, by, last_ms, n, to_ms, among)]  # fmt: skip
    return sorted(found, key=lambda r: (-r.value, r.sensor_id))[:n]


def _shard_top(
    store: Store, metric: str, by: str, last_ms: int, n: int, to_ms: int,
    among: Collection[str] | None,
) -> list[Ranked]:  # fmt: skip
    """The n sensors of one store with the highest `by` over the `last_ms` before `to_ms`.

    Every sensor's statistics come from the fleet buckets, merged with numpy; only the
    winners' windows are read in full. Percentiles need histograms, so for them sensors are
    visited by falling maximum (a percentile never exceeds the maximum), a few hundred at a
    time, until no sensor left can beat the n-th best.
    """
    if by not in RANKINGS:
        raise QueryError(f"cannot rank by {by!r}; choose one of {', '.join(RANKINGS)}")
    from_ms = to_ms - last_ms
    tier = choose_tier(store.tiers, last_ms, FLEET_BUCKETS)
    merged = _merge_fleet_buckets(store, tier, metric, from_ms, to_ms)
    if merged is None:
        return []
    names, columns = merged
    if among is not None:
        chosen = set(among)
        keep = np.array([name in chosen for name in names], dtype=bool)
        names = [name for name, kept in zip(names, keep.tolist(), strict=True) if kept]
        columns = {name: column[keep] for name, column in columns.items()}
        if not names:
            return []
    if by in columns:
        value = columns[by]
    else:
        value = _percentiles_by_falling_maximum(
            store, tier, names, columns["max"], metric, from_ms, to_ms, by, n
        )
    known = np.flatnonzero(~np.isnan(value))
    # The n best, and any tied with the n-th, in order; ties go to the smaller sensor id.
    cut = _nth_largest(value[known], min(n, len(known)))
    contenders = known[value[known] >= cut].tolist()
    winners = sorted(contenders, key=lambda i: (-value[i], names[i]))[:n]
    found = windows(store, [names[i] for i in winners], metric, from_ms, to_ms, tier.name)
    return [Ranked(w.sensor_id, getattr(w.stats, by), w) for w in found if w.stats is not None]


def _percentiles_by_falling_maximum(
    store: Store,
    tier: Tier,
    names: Sequence[str],
    highest: npt.NDArray[np.float64],
    metric: str,
    from_ms: int,
    to_ms: int,
    by: str,
    n: int,
) -> npt.NDArray[np.float64]:
    """Each sensor's percentile `by` where it could be among the n best, NaN elsewhere.

    A percentile never exceeds the maximum: sensors are read by falling maximum (then rising
    id), a few hundred at a time, until no sensor left can beat the n-th best found: its value
    is above every maximum left, or equal to the next maximum with an id before the next
    sensor's (ties go to the smaller id). At most FLEET_MAX_WINDOWS sensors are read."""
    q = PERCENTILES[PERCENTILE_FIELDS.index(by)]
    value = np.full(len(names), np.nan)
    order = np.array(sorted(range(len(names)), key=lambda i: (-highest[i], names[i])), np.intp)
    visited = 0
    while visited < len(order):
        seen = order[:visited]
        seen = seen[~np.isnan(value[seen])]
        if len(seen) >= n:
            nth = sorted(seen.tolist(), key=lambda i: (-value[i], names[i]))[n - 1]
            upcoming = int(order[visited])
            if value[nth] > highest[upcoming] or (
                value[nth] == highest[upcoming] and names[nth] < names[upcoming]
            ):
                break
        if visited >= FLEET_MAX_WINDOWS:
            raise QueryError(
                f"ranking by {by} needs more than {FLEET_MAX_WINDOWS} sensors' histograms: "
                "rank by max or mean, or ask for a shorter window"
            )
        batch = order[visited : visited + FLEET_PERCENTILE_BATCH]
        sensor_ids = [names[i] for i in batch.tolist()]
        stored = read_buckets(
            store.client, store.keys, tier, sensor_ids, metric, from_ms, to_ms,
            finest=store.tiers[0],
        )  # fmt: skip
        value[batch] = stored.quantiles(stored.sensor, len(sensor_ids), [q])[:, 0]
        visited += len(batch)
    return value


def _merge_fleet_buckets(
    store: Store, tier: Tier, metric: str, from_ms: int, to_ms: int
) -> tuple[list[str], dict[str, npt.NDArray[np.float64]]] | None:
    """The sensors with data in the window, and for each of them the reports a fleet question
    ranks by (all but percentiles), from the fleet buckets (one string per bucket for every
    sensor)."""
    store.check_format()
    starts = range(tier.bucket_of(from_ms), to_ms, tier.bucket_ms)
    # A coarse tier's buckets lack the fine buckets not rolled up yet: those are read too, in
    # one transaction with the mark that says which they are.
    finest = store.tiers[0]
    guess = read_mark(store.client, store.keys) if tier != finest and starts else None
    end = starts[-1] + tier.bucket_ms if starts else from_ms
    waiting = range(max(guess.bucket, starts[0]), end, finest.bucket_ms) if guess else range(0)
    with redis_errors():
        known = int(store.client.llen(store.keys.sensor_names))
    if known * (len(starts) + len(waiting)) > FLEET_MAX_SUMMARIES:
        raise QueryError(
            f"a fleet question over {len(starts) + len(waiting)} buckets of {known} sensors is "
            f"over the limit of {FLEET_MAX_SUMMARIES} summaries: ask for a shorter window"
        )
    with redis_errors():
        pipe = store.client.pipeline(transaction=True)
        pipe.lrange(store.keys.sensor_names, 0, -1)
        pipe.hget(store.keys.packed_until, tier.name)
        for start in starts:
            pipe.get(store.keys.fleet_bucket(tier.name, metric, start))
        for start in waiting:
            pipe.get(store.keys.fleet_bucket(finest.name, metric, start))
        pipe.hmget(store.keys.rollup_mark, MARK_FIELDS)
        sensors, packed_until, *fleet_buckets, mark_reply = pipe.execute()
    # The fleet buckets of packed chunks are gone: those buckets come from every sensor's
    # packed chunks, which takes longer.
    if packed_until is not None:
        cold = [s for s in starts if tier.chunk_of(s) + tier.chunk_ms <= int(packed_until)]
        summaries = _packed_summaries(store, tier, metric, sensors, cold)
        for start, summary in zip(cold, summaries, strict=True):
            fleet_buckets[starts.index(start)] = summary
    # Of the fine buckets, only sensors' summaries the mark says are not rolled up yet count.
    mark = parse_mark(mark_reply) or Mark(end, 0, end)
    first_sensor = [0] * len(starts) + [
        len(sensors) if start < mark.bucket else mark.sensor if start < mark.until else 0
        for start in waiting
    ]
    # Bucket (those with data), sensor by number, summary column; a sensor numbered after a
    # bucket was last written has zeros there, as has one without readings in it.
    width = len(SUMMARY.names)
    rows = [
        (value, first) for value, first in zip(fleet_buckets, first_sensor, strict=True) if value
    ]
    table = np.zeros((len(rows), len(sensors), width))
    for row, (value, first) in zip(table, rows, strict=True):
        found = np.frombuffer(value, "<f8").reshape(-1, width)
        row[first : len(found)] = found[first:]
    # The first column counts readings.
    present = np.flatnonzero(table[:, :, 0].sum(axis=0) > 0)
    if not len(present):
        return None
    chosen = table[:, present, :]
    merged = SUMMARY.fold(chosen, chosen[:, :, 0] > 0)
    columns = {name: REPORTS[name](merged) for name in RANKINGS if name in REPORTS}
    return [sensors[i].decode() for i in present.tolist()], columns


def _packed_summaries(
    store: Store, tier: Tier, metric: str, sensors: Sequence[bytes], starts: Sequence[int]
) -> list[bytes]:
    """For each of `starts`, every sensor's summary in that bucket as a fleet bucket holds
    it, read from the sensors' packed chunks (and records written after)."""
    table = np.zeros((len(starts), len(sensors), len(SUMMARY.names)))
    if not starts:
        return []
    for first in range(0, len(sensors), FLEET_PACKED_BATCH):
        names = [name.decode() for name in sensors[first : first + FLEET_PACKED_BATCH]]
        found = read_buckets(
            store.client, store.keys, tier, names, metric, starts[0],
            starts[-1] + tier.bucket_ms, finest=store.tiers[0],
        )  # fmt: skip
        row = (found.start - starts[0]) // tier.bucket_ms
        values = found.summary.view("<f8").reshape(len(found), len(SUMMARY.names))
        table[row, first + found.sensor] = values
    return [bucket.astype("<f8").tobytes() for bucket in table]


def _nth_largest(values: npt.NDArray[np.float64], n: int) -> float:
    return float(-np.partition(-values, n - 1)[n - 1])
