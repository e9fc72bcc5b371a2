"""RequestStats on explicit clocks: the integral is the exact area under the in-flight curve."""

from __future__ import annotations

import time

import pytest

from kapa.core.contract import CODE_CLASSES, DURATION_BUCKETS_S
from kapa.core.histogram import bucket_index
from queue_proxy.stats import RequestStats, Snapshot

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


def test_a_fresh_snapshot_is_all_zero_at_its_instant() -> None:
    empty_histogram = (0,) * (len(DURATION_BUCKETS_S) + 1)
    assert RequestStats(now=5.0).snapshot(7.0) == Snapshot(
        at=7.0, concurrency_seconds=0.0, proxied_concurrency_seconds=0.0, in_flight=0, proxied_in_flight=0,
        requests_by_class=dict.fromkeys(CODE_CLASSES, 0), proxied_requests=0, duration_bucket_counts=empty_histogram,
        duration_sum_s=0.0, queue_depth=0, queued=0, rejected_by_reason={},
    )


def test_the_clock_starts_at_construction() -> None:
    """The drain's quiet period counts from the last arrival, which is the start until a request comes."""
    assert RequestStats(now=5.0).last_arrival == 5.0
    before = time.monotonic()
    started = RequestStats().last_arrival
    assert before <= started <= time.monotonic()
    stats = RequestStats(now=5.0)
    stats.started(6.5, False)
    stats.finished(8.0, 6.5, False, 200)
    assert stats.last_arrival == 6.5  # an arrival, not a completion


def test_snapshot_copies_every_counter() -> None:
    """Two proxied requests overlapping (0-2 s and 1-3 s) and one plain one still in flight at the scrape."""
    stats = RequestStats(now=0.0)
    stats.started(0.0, True)
    stats.started(1.0, True)
    assert (stats.in_flight, stats.proxied_in_flight) == (2, 2)
    stats.finished(2.0, 0.0, True, 200)
    stats.started(2.5, False)
    stats.finished(3.0, 1.0, True, 503)
    stats.queued = 3
    stats.reject("queue_full")
    stats.reject("timeout")
    stats.reject("queue_full")
    snapshot = stats.snapshot(3.5, queue_depth=4)
    histogram = [0] * (len(DURATION_BUCKETS_S) + 1)
    histogram[bucket_index(2.0)] = 2  # both proxied requests took exactly 2 s
    assert snapshot == Snapshot(
        at=3.5,
        # in flight: 1 over 0-1, 2 over 1-2, 1 over 2-2.5, 2 over 2.5-3, 1 over 3-3.5
        concurrency_seconds=1.0 + 2.0 + 0.5 + 1.0 + 0.5,
        # proxied: 1 over 0-1, 2 over 1-2, 1 over 2-3
        proxied_concurrency_seconds=1.0 + 2.0 + 1.0,
        in_flight=1,
        proxied_in_flight=0,
        requests_by_class={"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 1},
        proxied_requests=2,
        duration_bucket_counts=tuple(histogram),
        duration_sum_s=4.0,
        queue_depth=4,
        queued=3,
        rejected_by_reason={"queue_full": 2, "timeout": 1},
    )
    # A scrape brings the integrals up to its instant, the proxied one too (0.75 s x 1 proxied in flight).
    stats.started(4.0, True)
    assert stats.snapshot(4.75).proxied_concurrency_seconds == pytest.approx(4.0 + 0.75)
    assert stats.snapshot(5.25).concurrency_seconds == pytest.approx(5.0 + 0.5 + 1.25 * 2)


@pytest.mark.parametrize(
    ("status", "code_class"),
    [(100, "1xx"), (199, "1xx"), (200, "2xx"), (399, "3xx"), (499, "4xx"), (599, "5xx"),
     # Outside 100-599 (an app answering 600, or no status at all): counted as a server error.
     (600, "5xx"), (99, "5xx"), (0, "5xx")],
)
def test_a_status_counts_in_its_class(status: int, code_class: str) -> None:
    stats = RequestStats(now=0.0)
    stats.started(0.0, False)
    stats.finished(1.0, 0.0, False, status)
    assert stats.snapshot(1.0).requests_by_class == {**dict.fromkeys(CODE_CLASSES, 0), code_class: 1}


def test_a_malformed_request_counts_a_response_and_nothing_in_flight() -> None:
    stats = RequestStats(now=0.0)
    stats.count_response(400)
    stats.count_response(431)
    stats.count_response(503)
    snapshot = stats.snapshot(1.0)
    assert snapshot.requests_by_class == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 2, "5xx": 1}
    assert (snapshot.in_flight, snapshot.concurrency_seconds, sum(snapshot.duration_bucket_counts)) == (0, 0.0, 0)
