"""Quantiles of a Prometheus histogram, as PromQL's `histogram_quantile` estimates them. Pure.

    histogram_quantile(0.95, {0.005: 3, 0.01: 9, 0.025: 10, math.inf: 10})  # 0.01

The buckets are cumulative counts by upper bound (`le`). The quantile's rank falls in
one bucket, and the value is interpolated linearly inside it (the first bucket starts at
0): an estimate at the buckets' resolution, never finer. A rank in the `+Inf` bucket
gives the highest finite bound, as Prometheus does.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping


def histogram_quantile(quantile: float, buckets: Mapping[float, int]) -> float | None:
    """The `quantile` (0..1) of the observations in `buckets`; None when there are
    none, or no `+Inf` bucket, or fewer than two buckets."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return None
    counts = _monotonic([buckets[bound] for bound in bounds])
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = min(max(quantile, 0.0), 1.0) * observations
    index = bisect.bisect_left(counts, rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if index == 0 else bounds[index - 1]
    below = 0 if index == 0 else counts[index - 1]
    inside = counts[index] - below
    if inside <= 0:
        return bounds[index]
    return start + (bounds[index] - start) * (rank - below) / inside


def _monotonic(counts: list[int]) -> list[int]:
    """Cumulative counts never falling (a sum of deltas may, by a count or so)."""
    fixed, highest = [], 0
    for count in counts:
        highest = max(highest, count)
        fixed.append(highest)
    return fixed
