"""Window maths without servers: the histogram's stated error, merges, pre-aggregation."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.buckets import Buckets
from analytics.preaggregate import preaggregate
from analytics.sketch import RELATIVE_ERROR, ZERO_LIMIT, bin_keys, bin_value, quantiles_of_many
from analytics.stats import BucketStats
from analytics.tiers import parse_tiers
from ingest.contract.columns import ReadingColumns
from ingest.contract.reading import Reading

QS = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)
NOW = 1_800_000_000_000
TIERS = parse_tiers("10s:6h,1m:7d,1h:90d")


def record_stats(record: bytes) -> BucketStats:
    """A stored record's statistics, read as the query side reads records."""
    return Buckets.from_records(np.zeros(1, np.int64), np.zeros(1, np.int64), [record]).stats()[0]


def columns_of(readings: list[Reading]) -> ReadingColumns:
    return ReadingColumns.of([f"{i + 1}-0" for i in range(len(readings))], readings)


def stats_of(values: list[float], ts: list[int] | None = None) -> BucketStats:
    times = ts or list(range(NOW - len(values), NOW))
    readings = [Reading("s", t, {"m": v}) for t, v in zip(times, values, strict=True)]
    outcome = preaggregate(columns_of(readings), parse_tiers("1w:4w"), NOW, 0)
    merged = BucketStats.empty()
    deltas = outcome.tiers[0]
    for g in range(len(deltas)):
        merged.merge(record_stats(deltas.record(g)))
    return merged


def within_error(estimate: float | None, exact: float) -> bool:
    assert estimate is not None
    return abs(estimate - exact) <= RELATIVE_ERROR * abs(exact) + ZERO_LIMIT


values_lists = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, -0.0, 1e-12, 21.5]),
    min_size=1,
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(values_lists)
def test_percentiles_are_within_the_stated_error_of_numpy(values: list[float]) -> None:
    stats = stats_of(values)
    data = np.asarray(values)
    for q, estimate in zip(QS, stats.percentiles(QS), strict=True):
        exact = float(np.percentile(data, q * 100, method="lower"))
        assert within_error(estimate, exact), (q, estimate, exact)
    assert stats.count == len(values)
    assert stats.report("min") == data.min() and stats.report("max") == data.max()
    assert np.isclose(stats.column("s"), data.sum(), rtol=1e-9, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(values_lists, st.lists(st.integers(0, 400), max_size=5))
def test_merging_parts_equals_the_whole(values: list[float], cuts: list[int]) -> None:
    ts = [NOW - 1000 + i % 7 for i in range(len(values))]
    whole = stats_of(values, ts)
    edges = sorted({0, len(values), *[c % (len(values) + 1) for c in cuts]})
    merged = BucketStats.empty()
    for a, b in itertools.pairwise(edges):
        if a < b:
            merged.merge(stats_of(values[a:b], ts[a:b]))
    assert merged.count == whole.count and merged.bins == whole.bins
    for name in ("min", "max", "first_ts_ms", "first", "last_ts_ms", "last"):
        assert merged.report(name) == whole.report(name), name
    assert np.isclose(merged.column("s"), whole.column("s"), rtol=1e-9, atol=1e-6)


def test_preaggregation_groups_by_sensor_metric_tier_and_bucket() -> None:
    rng = np.random.default_rng(3)
    readings = [
        Reading(f"s{i % 5}", NOW - int(rng.integers(0, 3_600_000)), {"a": float(i), "b": -i / 3})
        for i in range(2000)
    ]
    outcome = preaggregate(columns_of(readings), TIERS, NOW, 0)
    assert outcome.aggregated == 2000 and outcome.too_old == outcome.too_new == 0
    for deltas in outcome.tiers:
        size = deltas.tier.bucket_ms
        for g in range(len(deltas)):
            sensor, metric = outcome.flat.pairs[int(deltas.pair[g])]
            bucket = int(deltas.bucket[g])
            expected = [
                r.metrics[metric]
                for r in readings
                if r.sensor_id == sensor and bucket <= r.ts_ms < bucket + size
            ]
            got = record_stats(deltas.record(g))
            assert got.count == len(expected)
            assert got.report("min") == min(expected) and got.report("max") == max(expected)
        assert sum(record_stats(deltas.record(g)).count for g in range(len(deltas))) == 4000


def test_readings_outside_every_retention_or_from_the_future_are_counted_apart() -> None:
    readings = [
        Reading("s", NOW - 100 * 86_400_000, {"m": 1.0}),  # older than every tier keeps
        Reading("s", NOW - 8 * 86_400_000, {"m": 2.0}),  # only the 1h tier keeps it
        Reading("s", NOW + 2 * 3_600_000, {"m": 3.0}),  # hours ahead of the clock
        Reading("s", NOW - 1000, {"m": 4.0}),
    ]
    outcome = preaggregate(columns_of(readings), TIERS, NOW, 3_600_000)
    assert (outcome.aggregated, outcome.too_old, outcome.too_new) == (2, 1, 1)
    assert outcome.tier_drops == {"10s": 2, "1m": 2, "1h": 1}


@given(st.lists(st.floats(-1e300, 1e300, allow_nan=False), min_size=2, max_size=50))
def test_bin_keys_sort_as_their_values(values: list[float]) -> None:
    keys = bin_keys(np.asarray(values)).tolist()
    assert [bin_value(k) for k in sorted(keys)] == sorted(bin_value(k) for k in keys)


def one_histogram_quantiles(
    bins: list[tuple[int, int]], qs: tuple[float, ...], lowest: float, highest: float
) -> list[float | None]:
    """The quantile definition, one histogram and one bin at a time."""
    merged: dict[int, int] = {}
    for key, count in bins:
        merged[key] = merged.get(key, 0) + count
    total = sum(merged.values())
    if total == 0:
        return [None] * len(qs)
    out: list[float | None] = []
    for q in qs:
        rank, seen = int(q * (total - 1)), 0
        for key in sorted(merged):
            seen += merged[key]
            if seen > rank:
                out.append(min(max(bin_value(key), lowest), highest))
                break
    return out


histograms = st.lists(
    st.tuples(
        st.lists(
            st.tuples(st.integers(-(1 << 20) - 50, (1 << 20) + 50), st.integers(0, 5)),
            max_size=30,
        ),
        st.floats(-1e3, 1e3),
        st.floats(0, 1e3),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(histograms)
def test_many_histograms_at_once_give_each_one_s_quantiles(
    given_histograms: list[tuple[list[tuple[int, int]], float, float]],
) -> None:
    keys = [k for bins, _, _ in given_histograms for k, _ in bins]
    counts = [c for bins, _, _ in given_histograms for _, c in bins]
    owner = [i for i, (bins, _, _) in enumerate(given_histograms) for _ in bins]
    lowest = np.array([lo for _, lo, _ in given_histograms])
    highest = lowest + np.array([span for _, _, span in given_histograms])
    found = quantiles_of_many(
        np.array(keys, np.int64), np.array(counts, np.int64), np.array(owner, np.intp),
        len(given_histograms), QS, lowest, highest,
    )  # fmt: skip
    for i, (bins, _, _) in enumerate(given_histograms):
        expected = one_histogram_quantiles(bins, QS, float(lowest[i]), float(highest[i]))
        assert [None if np.isnan(v) else v for v in found[i].tolist()] == expected
