"""A mergeable log-bucketed histogram (the DDSketch mapping) for percentiles.

A value v with |v| > ZERO_LIMIT falls in bin k with gamma^(k-1) < |v| <= gamma^k, and the bin is
represented by 2 gamma^k / (gamma + 1), which is within RELATIVE_ERROR of every value in it.
Values closer to zero than ZERO_LIMIT share one bin represented by 0. Bins merge by adding
counts, so buckets written by many consumers, and buckets merged at query time, give the same
answer as one histogram over all the values.

A percentile q of n values is the value of rank floor(q (n - 1)) in sorted order (numpy's
`percentile(..., method="lower")`), to within RELATIVE_ERROR, and never outside [min, max].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
LOG_GAMMA = math.log(GAMMA)
ZERO_LIMIT = 1e-9
# Bin keys: BIAS + k for positive values, -(BIAS + k) for negative ones, 0 for the zero bin.
BIAS = 1 << 20


def bin_keys(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    magnitude = np.abs(values)
    with np.errstate(divide="ignore"):
        k = np.ceil(np.log(np.maximum(magnitude, ZERO_LIMIT)) / LOG_GAMMA).astype(np.int64)
    keys = BIAS + k
    keys = np.where(values < 0, -keys, keys)
    return np.where(magnitude <= ZERO_LIMIT, 0, keys)


@functools.lru_cache(maxsize=1 << 16)
def bin_value(key: int) -> float:
    if key == 0:
        return 0.0
    k = abs(key) - BIAS
    value = 2 * GAMMA**k / (GAMMA + 1)
    return -value if key < 0 else value


def quantiles(
    bins: Mapping[int, int], qs: Sequence[float], lowest: float, highest: float
) -> list[float | None]:
    """The q-quantiles (0 <= q <= 1, ascending) of the values counted in `bins`; None for each
    when there are no bins."""
    keys = np.fromiter(bins.keys(), np.int64, len(bins))
    counts = np.fromiter(bins.values(), np.int64, len(bins))
    found = quantiles_of_many(
        keys, counts, np.zeros(len(bins), np.intp), 1, qs,
        np.array([lowest]), np.array([highest]),
    )[0]  # fmt: skip
    return [None if math.isnan(v) else v for v in found.tolist()]


def quantiles_of_many(
    keys: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    owner: npt.NDArray[np.intp],
    owners: int,
    qs: Sequence[float],
    lowest: npt.NDArray[np.float64],
    highest: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """The q-quantiles of several histograms at once: bin `keys[i]` counts `counts[i]` values
    of histogram `owner[i]` (a key may repeat); one row per histogram, NaN where it is empty.
    Each quantile is clipped to its histogram's [lowest, highest]."""
    out = np.full((owners, len(qs)), np.nan)
    if not len(keys):
        return out
    # Keys sort as their values do: negative keys grow more negative with magnitude.
    order = np.lexsort((keys, owner))
    keys, seen = keys[order], np.cumsum(counts[order])
    totals = np.bincount(owner, weights=counts, minlength=owners).astype(np.int64)
    before = np.cumsum(totals) - totals
    has = np.flatnonzero(totals > 0)
    for j, q in enumerate(qs):
        # The bin where the count seen so far first exceeds the rank floor(q (n - 1)).
        ranks = np.floor(q * (totals[has] - 1)).astype(np.int64)
        at = keys[np.searchsorted(seen, before[has] + ranks, side="right")]
        unique, where = np.unique(at, return_inverse=True)
        values = np.array([bin_value(k) for k in unique.tolist()])[where]
        out[has, j] = np.minimum(np.maximum(values, lowest[has]), highest[has])
    return out
