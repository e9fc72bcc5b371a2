"""The shared duration histogram: bucket choice (le inclusive) and the cumulative form Prometheus wants."""

from __future__ import annotations

from kapa.core.contract import DURATION_BUCKETS_S
from kapa.core.histogram import bucket_index, cumulative_buckets, empty_buckets


def test_durations_land_in_their_buckets_and_add_up_cumulatively() -> None:
    counts = empty_buckets()
    for seconds in (0.001, 0.005, 0.02, 1000.0):
        counts[bucket_index(seconds)] += 1
    buckets = cumulative_buckets(counts)
    assert len(buckets) == len(DURATION_BUCKETS_S) + 1
    assert buckets[0] == ("0.005", 2)  # 0.005 is exactly on the first bound: counted there
    assert buckets[2] == ("0.025", 3)
    assert buckets[-2] == ("300.0", 3) and buckets[-1] == ("+Inf", 4)
