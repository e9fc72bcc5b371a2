"""RequestStats on explicit clocks: the integral is the exact area under the in-flight curve."""

from __future__ import annotations

import pytest

from kapa.contract import DURATION_BUCKETS_S
from queue_proxy.stats import RequestStats

# (events, scrape time, expected integral, expected proxied integral); an event is
# ("start", t, proxied) or ("end", t, started_at, proxied, status).
CASES = [
    ([], 10.0, 0.0, 0.0),
    ([("start", 1.0, False), ("end", 1.005, 1.0, False, 200)], 2.0, 0.005, 0.0),
    ([("start", 0.0, False), ("start", 1.0, True), ("end", 2.0, 1.0, True, 200)], 3.0, 4.0, 1.0),
    # Still in flight at the scrape: counted up to the scrape instant.
    ([("start", 0.5, False), ("start", 0.5, False)], 1.5, 2.0, 0.0),
]


@pytest.mark.parametrize(("events", "scrape_at", "integral", "proxied_integral"), CASES)
def test_integral(events: list[tuple], scrape_at: float, integral: float, proxied_integral: float) -> None:
    stats = RequestStats(now=0.0)
    for event in events:
        if event[0] == "start":
            stats.started(event[1], event[2])
        else:
            stats.finished(event[1], event[2], event[3], event[4])
    snap = stats.snapshot(scrape_at)
    assert snap.concurrency_seconds == pytest.approx(integral)
    assert snap.proxied_concurrency_seconds == pytest.approx(proxied_integral)


def test_scrapes_split_the_integral_without_loss() -> None:
    stats = RequestStats(now=0.0)
    stats.started(0.0, False)
    first = stats.snapshot(0.3).concurrency_seconds
    stats.started(0.4, False)
    second = stats.snapshot(0.7).concurrency_seconds
    stats.finished(1.0, 0.0, False, 200)
    stats.finished(1.0, 0.4, False, 200)
    third = stats.snapshot(2.0).concurrency_seconds
    # request 1 spans 0-1.0, request 2 spans 0.4-1.0
    assert (first, second, third) == pytest.approx((0.3, 0.7 + 0.3, 1.0 + 0.6))


def test_classes_and_histogram() -> None:
    stats = RequestStats(now=0.0)
    for status, duration in [(200, 0.001), (204, 0.02), (499, 0.3), (503, 400.0), (101, 5.0)]:
        stats.started(0.0, False)
        stats.finished(duration, 0.0, False, status)
    snap = stats.snapshot(500.0)
    assert snap.requests_by_class == {"1xx": 1, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1}
    assert len(snap.duration_bucket_counts) == len(DURATION_BUCKETS_S) + 1
    assert snap.duration_bucket_counts[0] == 1  # 1 ms <= 5 ms
    assert snap.duration_bucket_counts[DURATION_BUCKETS_S.index(0.025)] == 1
    assert snap.duration_bucket_counts[DURATION_BUCKETS_S.index(5.0)] == 1  # exactly on a bound: le is inclusive
    assert snap.duration_bucket_counts[-1] == 1  # 400 s: only +Inf
    assert snap.in_flight == 0
