"""Packed chunks give back exactly what was packed, whatever the values, in a few bytes per
bucket for readings as sensors send them; a damaged blob is a clear error."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest

from analytics.buckets import Buckets
from analytics.packed import HEADER, CorruptPack, pack, unpack, unpack_many
from analytics.sketch import bin_keys
from analytics.summary import SUMMARY, Runs

BUCKET_MS = 60_000
CHUNK_MS = 1_800_000_000_000 - 1_800_000_000_000 % (60 * BUCKET_MS)


def buckets_of(ts: np.ndarray, values: np.ndarray) -> Buckets:
    """The buckets numpy makes of readings (sorted by time), as the aggregator stores them."""
    bucket = ts - ts % BUCKET_MS
    order = np.lexsort((values, ts, bucket))
    ts, values, bucket = ts[order], values[order], bucket[order]
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(ts)] - 1
    with np.errstate(over="ignore"):  # squares of 1e300
        summary = SUMMARY.of_runs(Runs(ts, values, starts, ends))
    owner = np.repeat(np.arange(len(starts)), ends - starts + 1)
    return Buckets(
        np.zeros(len(starts), np.int64), bucket[starts], summary, bin_keys(values),
        np.ones(len(values), np.int64), owner,
    )  # fmt: skip


def readings(kind: str, seconds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = CHUNK_MS + np.sort(rng.choice(60 * BUCKET_MS, seconds, replace=False))
    values = {
        "two decimals": np.round(21 + np.cumsum(rng.normal(0, 0.05, seconds)), 2),
        "three decimals": np.round(rng.normal(0.45, 0.1, seconds), 3),
        "full doubles": rng.normal(0, 1, seconds),
        "huge and tiny": rng.choice([1e300, -1e300, 1e-300, 5e-324, -0.0, 0.0, 7.0], seconds),
        "whole numbers": rng.integers(-(2**40), 2**40, seconds).astype(np.float64),
    }[kind]
    return ts.astype(np.int64), values


def assert_same(got: Buckets, want: Buckets) -> None:
    want = want.with_bins_merged()
    assert got.summary.tobytes() == want.summary.tobytes()
    assert np.array_equal(got.start, want.start)
    assert np.array_equal(got.bin_key, want.bin_key)
    assert np.array_equal(got.bin_count, want.bin_count)
    assert np.array_equal(got.bin_bucket, want.bin_bucket)


@pytest.mark.parametrize(
    "kind", ["two decimals", "three decimals", "full doubles", "huge and tiny", "whole numbers"]
)
@pytest.mark.parametrize("seconds", [1, 7, 3600])
def test_a_blob_gives_back_every_bit(kind: str, seconds: int) -> None:
    made = buckets_of(*readings(kind, seconds, seed=seconds))
    assert_same(unpack(pack(made, CHUNK_MS, BUCKET_MS), CHUNK_MS, BUCKET_MS), made)


def test_many_blobs_of_different_modes_unpack_together() -> None:
    kinds = ["two decimals", "full doubles", "huge and tiny", "whole numbers"]
    made = [buckets_of(*readings(kind, 50 * (i + 1), seed=i)) for i, kind in enumerate(kinds)]
    blobs = [pack(part, CHUNK_MS, BUCKET_MS) for part in made]
    got = unpack_many(blobs, np.full(len(blobs), CHUNK_MS), BUCKET_MS)
    for i, part in enumerate(made):
        assert_same(got.taken(np.flatnonzero(got.sensor == i)), part)
    summaries = unpack_many(blobs, np.full(len(blobs), CHUNK_MS), BUCKET_MS, histograms=False)
    assert summaries.summary.tobytes() == got.summary.tobytes()
    assert len(summaries.bin_key) == 0


def test_a_bin_listed_twice_is_packed_once() -> None:
    made = buckets_of(*readings("two decimals", 120, seed=5))
    doubled = Buckets.joined([made, made])
    twice = Buckets(
        made.sensor, made.start, made.summary, doubled.bin_key, doubled.bin_count,
        np.r_[made.bin_bucket, made.bin_bucket],
    )  # fmt: skip
    got = unpack(pack(twice, CHUNK_MS, BUCKET_MS), CHUNK_MS, BUCKET_MS)
    assert np.array_equal(got.bin_count, 2 * made.with_bins_merged().bin_count)


def test_readings_as_sensors_send_them_pack_small() -> None:
    """A 1 Hz temperature with two decimals: an hour of one-minute buckets, each of which
    costs 72 bytes of summary and about 40 of histogram as a record."""
    ts = CHUNK_MS + np.arange(3600) * 1000 + np.random.default_rng(1).integers(0, 20, 3600)
    _, values = readings("two decimals", 3600, seed=1)
    made = buckets_of(ts, values)
    assert len(pack(made, CHUNK_MS, BUCKET_MS)) / len(made) < 30


def test_a_damaged_blob_is_a_clear_error() -> None:
    blob = pack(buckets_of(*readings("two decimals", 100, seed=2)), CHUNK_MS, BUCKET_MS)
    version, columns, n, length = HEADER.unpack_from(blob)
    damaged = {
        "too short": blob[:5],
        "another version": HEADER.pack(version + 1, columns, n, length) + blob[HEADER.size :],
        "more buckets than data": HEADER.pack(version, columns, n + 1, length)
        + blob[HEADER.size :],
        "cut in the middle": blob[: len(blob) // 2],
        "garbage": blob[: HEADER.size + columns] + b"\xff" * 64,
        "a deflate bomb": HEADER.pack(version, columns, 1, 0)
        + bytes(columns)
        + zlib.compress(bytes(8 * 10_000_000), 9, -15),
    }
    for name, bad in damaged.items():
        with pytest.raises(CorruptPack):
            unpack(bad, CHUNK_MS, BUCKET_MS)
        assert name


def test_exponent_search_never_rounds_a_value_away() -> None:
    """Values one unit in the last place off a decimal still come back bit for bit."""
    base = np.round(np.linspace(-50, 50, 60), 2)
    nudged = np.nextafter(base, math.inf)
    made = buckets_of(CHUNK_MS + np.arange(60) * BUCKET_MS, nudged)
    got = unpack(pack(made, CHUNK_MS, BUCKET_MS), CHUNK_MS, BUCKET_MS)
    assert got.summary["lo"].view(np.int64).tolist() == nudged.view(np.int64).tolist()
    assert struct.pack("<d", got.summary["s"][0]) == struct.pack("<d", made.summary["s"][0])
