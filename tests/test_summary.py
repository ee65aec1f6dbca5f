"""The summary is defined once: every form derived from the definition agrees, the Lua merge that
runs in Redis included, for the shipped summary and for a toy one with extra statistics."""

from __future__ import annotations

from dataclasses import fields
from importlib import resources

import numpy as np
import pytest
import redis

from analytics.query import PERCENTILE_FIELDS, STATS_FIELDS, Stats
from analytics.stats import RECORD_FORMAT
from analytics.summary import REPORTS, SUMMARY, Column, Merge, Runs, Summary

# Each record format and the columns it stores: a change of SUMMARY's columns fails here until
# RECORD_FORMAT is bumped (and the new format listed), so no store is misread.
FORMATS = {
    1: "c:add s:add q:add lo:min hi:max fts:earliest fv:earliest lts:latest lv:latest",
    # Chunks of 60 buckets, closed ones packed.
    2: "c:add s:add q:add lo:min hi:max fts:earliest fv:earliest lts:latest lv:latest",
}

TOY = Summary(
    [
        *SUMMARY.columns,
        # How many readings were negative, and the largest magnitude.
        Column("neg", Merge.ADD, lambda r: np.add.reduceat(r.value < 0, r.starts), 0.0),
        Column("mag", Merge.MAX, lambda r: np.maximum.reduceat(abs(r.value), r.starts), 0.0),
    ]
)

# Merges the records given as ARGV one by one into a stored record, and all at once, with the
# functions the aggregate scripts use.
LUA_MERGES = """
local stored = false
for i = 1, #ARGV do
  stored = merged_record(stored, ARGV[i], 1, #ARGV[i], false)
end
return {stored, folded_record(ARGV)}
"""


def describe(summary: Summary) -> str:
    return " ".join(f"{c.name}:{c.merge.value}" for c in summary.columns)


def test_the_record_format_names_the_summary_it_stores() -> None:
    assert FORMATS[RECORD_FORMAT] == describe(SUMMARY)


def test_every_report_and_percentile_is_a_field_of_the_answer() -> None:
    assert tuple(f.name for f in fields(Stats)) == STATS_FIELDS
    assert set(STATS_FIELDS) == {"start_ms", "end_ms", *REPORTS, *PERCENTILE_FIELDS}


def runs_of(ts: np.ndarray, value: np.ndarray, parts: list[int]) -> Runs:
    """Rows sorted by time then value, cut into runs at `parts`."""
    order = np.lexsort((value, ts))
    starts = np.array([0, *parts], np.intp)
    ends = np.array([*parts, len(ts)], np.intp) - 1
    return Runs(ts[order], value[order], starts, ends)


@pytest.mark.parametrize("summary", [SUMMARY, TOY], ids=["shipped", "toy"])
@pytest.mark.parametrize("seed", range(4))
def test_each_merge_of_the_parts_equals_the_summary_of_the_whole(
    summary: Summary, seed: int, redis_url: str
) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    # Quarters add up exactly, in any order; times repeat to exercise the ties.
    ts = rng.integers(0, 50, n).astype(np.int64)
    value = rng.integers(-400, 400, n) / 4
    cuts = sorted(set(rng.integers(1, n, int(rng.integers(1, 6))).tolist()))
    whole = summary.of_runs(runs_of(ts, value, []))[0]
    # Parts cut in time order, and each part summarised on its own.
    order = np.lexsort((value, ts))
    parts = [
        summary.of_runs(runs_of(ts[rows], value[rows], []))[0]
        for rows in np.split(order[rng.permutation(n)], cuts)
    ]
    expected = tuple(whole.tolist())
    assert (whole["c"], whole["lo"], whole["hi"]) == (n, value.min(), value.max())
    if summary is TOY:
        assert (whole["neg"], whole["mag"]) == ((value < 0).sum(), abs(value).max())

    merged = summary.empty()
    for part in parts:
        merged = summary.merge(merged, tuple(part.tolist()))
    assert merged == expected

    table = np.array([tuple(p.tolist()) for p in parts])
    folded = summary.fold(table, np.ones(len(parts), bool))
    assert tuple(float(folded[name]) for name in summary.names) == expected

    records = [summary.struct.pack(*p.tolist()) for p in parts]
    merge_lua = resources.files("analytics").joinpath("lua", "merge.lua").read_text()
    client = redis.Redis.from_url(redis_url)
    one_by_one, all_at_once = client.eval(
        summary.lua_source() + merge_lua + LUA_MERGES, 0, *records
    )
    assert summary.struct.unpack(one_by_one) == expected
    assert summary.struct.unpack(all_at_once) == expected
