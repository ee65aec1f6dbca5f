"""Closed buckets packed: one sensor's buckets of one chunk (see `tiers.CHUNK_BUCKETS`) in a
blob of a few bytes per bucket, where a record of its own costs a hundred or more.

A blob is a header, then the summaries and then the histograms, each deflated on its own so
that a fleet question can read the summaries alone. Both are columns of integers, stored
byte-plane by byte-plane (all first bytes, then all second bytes, ...), which deflate squeezes
well when the integers are small:

- bucket positions in the chunk, as differences;
- each summary column (see `summary.SUMMARY`) in one of two modes, chosen per blob: decimal
  (the value times 10^e, rounded, as differences from the bucket before, plus the difference
  between the bits of the value and of that decimal read back, which is zero or a few units in
  the last place for sums of decimal readings), or raw (the value's bits XOR the bucket
  before's). Event times are taken as offsets from their bucket's start first. Either mode
  gives back the exact double stored;
- histograms with one entry per bin, keys ascending: the bins per bucket, each bucket's first
  key as a difference from the bucket before's, the later keys as differences from the key
  before, then the counts.

Layout: version byte, summary columns, buckets (uint16), summaries' deflated length (uint32),
one mode byte per summary column (the decimal exponent, or RAW), summaries, histograms.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from analytics.buckets import Buckets
from analytics.errors import AnalyticsError
from analytics.sketch import LOG_GAMMA, ZERO_LIMIT
from analytics.summary import SUMMARY
from ingest.contract.columns import Ints

PACK_VERSION = 1
HEADER = struct.Struct("<BBHI")
RAW = 255
# Decimal exponents tried: readings with up to this many digits after the point pack small.
MAX_EXPONENT = 12
# The decimal mode is kept only while a value's bits are this close to its decimal read back.
MAX_CORRECTION = 1 << 16
# Whole numbers beyond this are no longer exact as doubles.
EXACT_INTEGERS = float(1 << 53)
# zlib's raw deflate: no header or checksum (the blob is checked by its lengths).
DEFLATE_WINDOW = -15
LEVEL = 6
# A histogram has at most one bin per key the sketch gives a finite double (see `sketch`).
MAX_BINS = (
    2
    * (
        math.ceil(math.log(sys.float_info.max) / LOG_GAMMA)
        - math.ceil(math.log(ZERO_LIMIT) / LOG_GAMMA)
        + 1
    )
    + 1
)
_EXPONENTS = 10.0 ** np.arange(MAX_EXPONENT + 1, dtype=np.float64)
_TIMES = np.array([column.time for column in SUMMARY.columns])


class CorruptPack(AnalyticsError):
    """A packed chunk that this version cannot read."""


def pack(buckets: Buckets, chunk_ms: int, bucket_ms: int) -> bytes:
    """One sensor's buckets of the chunk starting at `chunk_ms`, sorted by start, each once,
    as a blob."""
    n = len(buckets)
    position = (buckets.start - chunk_ms) // bucket_ms
    values = np.stack([buckets.summary[name] for name in SUMMARY.names]).astype(np.float64)
    values[_TIMES] -= buckets.start
    exponents = _decimal_exponents(values)
    rows: list[Ints] = [_differences(position)]
    for row, exponent in zip(values, exponents.tolist(), strict=True):
        if exponent == RAW:
            bits = row.view(np.int64)
            rows.append(bits ^ np.r_[np.int64(0), bits[:-1]])
        else:
            scaled = np.round(row * _EXPONENTS[exponent])
            back = scaled / _EXPONENTS[exponent]
            rows += [
                _differences(scaled.astype(np.int64)),
                row.view(np.int64) - back.view(np.int64),
            ]
    summaries = _deflated(np.concatenate(rows))
    merged = buckets.with_bins_merged()
    per_bucket = np.bincount(merged.bin_bucket, minlength=n)
    keys = _differences(merged.bin_key)
    firsts = np.cumsum(per_bucket) - per_bucket
    has_bins = per_bucket > 0
    keys[firsts[has_bins]] = _differences(merged.bin_key[firsts[has_bins]])
    histograms = _deflated(np.concatenate([per_bucket, keys, merged.bin_count]))
    header = HEADER.pack(PACK_VERSION, len(SUMMARY.names), n, len(summaries))
    return header + exponents.astype(np.uint8).tobytes() + summaries + histograms


def unpack(blob: bytes, chunk_ms: int, bucket_ms: int, *, histograms: bool = True) -> Buckets:
    """A blob's buckets (sensor 0), in order of start; without bins unless `histograms`."""
    return unpack_many([blob], np.array([chunk_ms], np.int64), bucket_ms, histograms=histograms)


def unpack_many(
    blobs: Sequence[bytes], chunk_ms: Ints, bucket_ms: int, *, histograms: bool = True
) -> Buckets:
    """Many blobs' buckets at once: blob i holds chunk `chunk_ms[i]` of sensor i. Each blob
    costs a header and an inflate in Python; the rest is done for all of them together, so
    that a fleet question can read thousands."""
    buckets = np.zeros(len(blobs), np.int64)
    exponents = np.zeros((len(blobs), len(SUMMARY.names)), np.int64)
    summaries, bins = [], []
    for i, blob in enumerate(blobs):
        n, summary_end = _header(blob)
        buckets[i] = n
        exponents[i] = np.frombuffer(blob, np.uint8, len(SUMMARY.names), HEADER.size)
        if ((exponents[i] > MAX_EXPONENT) & (exponents[i] != RAW)).any():
            raise CorruptPack(f"packed chunk with a mode byte of {exponents[i].max()}")
        rows = 1 + sum(1 if e == RAW else 2 for e in exponents[i].tolist())
        summaries.append(_inflate(blob[HEADER.size + len(SUMMARY.names) : summary_end], rows * n))
        if histograms:
            bins.append(_inflate(blob[summary_end:], n * (1 + 2 * MAX_BINS)))
    widths = np.where(exponents == RAW, 1, 2)
    rows = 1 + widths.sum(axis=1)
    values, offsets = _integers(summaries, rows * buckets)
    sensor = np.repeat(np.arange(len(blobs)), buckets)
    local = np.arange(len(sensor)) - np.repeat(np.cumsum(buckets) - buckets, buckets)
    blob_at = np.repeat(offsets, buckets)

    def row(number: Ints) -> Ints:
        """Row `number[i]` of each blob i, for every bucket."""
        at = blob_at + np.repeat(number, buckets) * np.repeat(buckets, buckets) + local
        taken: Ints = values[np.minimum(at, len(values) - 1)]
        return taken

    start = (
        np.repeat(chunk_ms, buckets)
        + _running_sums(row(np.zeros(len(blobs), np.int64)), buckets) * bucket_ms
    )
    summary = np.empty(len(sensor), SUMMARY.dtype)
    first_rows = 1 + np.cumsum(widths, axis=1) - widths
    for c, (name, is_time) in enumerate(zip(SUMMARY.names, _TIMES.tolist(), strict=True)):
        main, extra = row(first_rows[:, c]), row(first_rows[:, c] + 1)
        scale = _EXPONENTS[np.minimum(np.repeat(exponents[:, c], buckets), MAX_EXPONENT)]
        decimal = _running_sums(main, buckets).astype(np.float64) / scale
        exact = (decimal.view(np.int64) + extra).view(np.float64)
        raw = _running_xors(main, buckets).view(np.float64)
        column = np.where(np.repeat(exponents[:, c] == RAW, buckets), raw, exact)
        summary[name] = column + start if is_time else column
    if not histograms:
        none = np.zeros(0, np.int64)
        return Buckets(sensor, start, summary, none, none, none)
    return _with_histograms(sensor, start, summary, bins, buckets)


def _with_histograms(
    sensor: Ints, start: Ints, summary: npt.NDArray[np.void], bins: list[bytes], buckets: Ints
) -> Buckets:
    """The buckets with their bins read from each blob's histograms: the bins per bucket,
    then the key steps, then the counts."""
    values, offsets = _integers(bins, None)
    lengths = np.diff(np.r_[offsets, len(values)])
    bucket_first = np.cumsum(buckets) - buckets
    local = np.arange(len(sensor)) - np.repeat(bucket_first, buckets)
    per_bucket = values[np.repeat(offsets, buckets) + local]
    per_blob = np.bincount(sensor, weights=per_bucket, minlength=len(buckets)).astype(np.int64)
    if (per_bucket < 0).any() or not np.array_equal(lengths, buckets + 2 * per_blob):
        raise CorruptPack("packed chunk's histograms do not match its buckets")
    bin_bucket = np.repeat(np.arange(len(sensor)), per_bucket)
    blob_of_bin = sensor[bin_bucket]
    bin_first = np.cumsum(per_blob) - per_blob
    within = np.arange(len(bin_bucket)) - bin_first[blob_of_bin]
    steps = values[(offsets + buckets)[blob_of_bin] + within]
    counts = values[(offsets + buckets + per_blob)[blob_of_bin] + within]
    firsts = np.cumsum(per_bucket) - per_bucket
    has_bins = per_bucket > 0
    heads = firsts[has_bins]
    first_keys = _running_sums(steps[heads], np.bincount(sensor[has_bins], minlength=len(buckets)))
    # Within a bucket, keys are its first key plus the steps after it.
    steps[heads] = 0
    running = np.cumsum(steps)
    base = np.zeros(len(sensor), np.int64)
    base[has_bins] = first_keys - running[heads]
    keys = running + base[bin_bucket]
    return Buckets(sensor, start, summary, keys, counts, bin_bucket)


def _decimal_exponents(values: npt.NDArray[np.float64]) -> Ints:
    """For each row, the smallest exponent e whose decimals give back every value to within
    MAX_CORRECTION units in the last place, or RAW."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.round(values[None, :, :] * _EXPONENTS[:, None, None])
        back = scaled / _EXPONENTS[:, None, None]
        correction = values.view(np.int64)[None] - back.view(np.int64)
        fits = (
            np.isfinite(values)[None]
            & (np.abs(scaled) < EXACT_INTEGERS)
            & (np.abs(correction) < MAX_CORRECTION)
        ).all(axis=2)
    found = fits.argmax(axis=0)
    exponents: Ints = np.where(fits.any(axis=0), found, RAW)
    return exponents


def _differences(values: Ints) -> Ints:
    wide = values.astype(np.int64)
    differences: Ints = wide - np.r_[np.int64(0), wide[:-1]]
    return differences


def _deflated(values: Ints) -> bytes:
    """Integers, zigzagged so that small negatives are small, as deflated byte planes."""
    wide = values.astype(np.int64)
    zigzag = ((wide << 1) ^ (wide >> 63)).view(np.uint64)
    planes = zigzag.astype("<u8").view(np.uint8).reshape(-1, 8).T
    return zlib.compress(planes.tobytes(), LEVEL, DEFLATE_WINDOW)


def _header(blob: bytes) -> tuple[int, int]:
    """A blob's bucket count and where its summaries end, checked."""
    try:
        version, columns, n, summaries_length = HEADER.unpack_from(blob)
    except struct.error as exc:
        raise CorruptPack(f"packed chunk of {len(blob)} bytes is too short") from exc
    if version != PACK_VERSION or columns != len(SUMMARY.names):
        raise CorruptPack(
            f"packed chunk of version {version} with {columns} columns; this version reads "
            f"version {PACK_VERSION} with {len(SUMMARY.names)}"
        )
    return n, HEADER.size + columns + summaries_length


def _inflate(data: bytes, most: int) -> bytes:
    """Deflated integers, at most `most` of them."""
    inflater = zlib.decompressobj(DEFLATE_WINDOW)
    try:
        planes = inflater.decompress(data, 8 * most)
    except zlib.error as exc:
        raise CorruptPack(f"packed chunk does not inflate: {exc}") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise CorruptPack("packed chunk inflates to more than its buckets hold, or is cut short")
    if len(planes) % 8:
        raise CorruptPack("packed chunk's columns are not whole integers")
    return planes


def _integers(parts: list[bytes], expected: Ints | None) -> tuple[Ints, Ints]:
    """Deflated byte planes (see `_deflated`) of several blobs as one array of integers, and
    where each blob's begin in it."""
    counts = np.fromiter((len(p) // 8 for p in parts), np.int64, len(parts))
    if expected is not None and not np.array_equal(counts, expected):
        raise CorruptPack("packed chunk's columns do not match its buckets")
    offsets = np.cumsum(counts) - counts
    if not parts:
        return np.zeros(0, np.int64), offsets
    zigzag = np.concatenate(
        [np.frombuffer(p, np.uint8).reshape(8, -1).T.copy().view("<u8").reshape(-1) for p in parts]
    )
    values: Ints = ((zigzag >> np.uint64(1)) ^ (np.uint64(0) - (zigzag & np.uint64(1)))).view(
        np.int64
    )
    return values, offsets


def _running_sums(values: Ints, lengths: Ints) -> Ints:
    """Cumulative sums restarting at each segment (segment i is the next `lengths[i]`)."""
    total = np.cumsum(values)
    ends = np.cumsum(lengths)
    before = np.r_[np.int64(0), total][ends - lengths]
    sums: Ints = total - np.repeat(before, lengths)
    return sums


def _running_xors(values: Ints, lengths: Ints) -> Ints:
    """`_running_sums` with XOR for the sum."""
    total = np.bitwise_xor.accumulate(values) if len(values) else values
    ends = np.cumsum(lengths)
    before = np.r_[np.int64(0), total][ends - lengths]
    xors: Ints = total ^ np.repeat(before, lengths)
    return xors
