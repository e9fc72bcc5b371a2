"""The request-duration histogram as both proxies keep it: one plain count per bucket of
contract.DURATION_BUCKETS_S (then +Inf), made cumulative only when Prometheus scrapes."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from kapa.core.contract import DURATION_BUCKETS_S

_BOUNDS = (*(repr(bound) for bound in DURATION_BUCKETS_S), "+Inf")


def empty_buckets() -> list[int]:
    """A count per bucket of DURATION_BUCKETS_S, plus one for +Inf."""
    return [0] * (len(DURATION_BUCKETS_S) + 1)


def bucket_index(seconds: float) -> int:
    """The bucket a duration of `seconds` is counted in (its upper bound is inclusive, as Prometheus's `le`)."""
    return bisect_left(DURATION_BUCKETS_S, seconds)


def cumulative_buckets(counts: Sequence[int]) -> list[tuple[str, float]]:
    """(le, cumulative count) pairs for HistogramMetricFamily.add_metric, from per-bucket counts."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip(_BOUNDS, counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return buckets
