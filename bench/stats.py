"""Percentiles, medians and ratios: the arithmetic behind every figure of the report."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["LatencySummary", "median", "percentile", "ratio", "summarize_ns"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of ``values`` by linear interpolation between the two
    nearest ranks (NumPy's default method), so p50 of an even count is the mean of the middle two.

    ``values`` need not be sorted; an empty sequence or a ``q`` outside 0..100 is a ValueError.
    """
    if not 0 <= q <= 100 or math.isnan(q):
        raise ValueError(f"percentile must be between 0 and 100, got {q!r}")
    if not values:
        raise ValueError("percentile of an empty sequence")
    return _sorted_percentile(sorted(values), q)


def _sorted_percentile(ordered: Sequence[float], q: float) -> float:
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or None when either is missing or the baseline is not positive."""
    if value is None or baseline is None or baseline <= 0 or math.isnan(baseline):
        return None
    return value / baseline


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Per-transition latency of one variant at one concurrency, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


def summarize_ns(durations_ns: Iterable[int]) -> LatencySummary | None:
    """Summarise durations given in nanoseconds; None when there are none."""
    values = sorted(durations_ns)
    if not values:
        return None
    to_ms = 1e-6
    return LatencySummary(
        count=len(values),
        p50_ms=_sorted_percentile(values, 50) * to_ms,
        p99_ms=_sorted_percentile(values, 99) * to_ms,
        mean_ms=sum(values) / len(values) * to_ms,
        max_ms=values[-1] * to_ms,
    )
