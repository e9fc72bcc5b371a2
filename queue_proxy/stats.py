"""Exact request accounting in plain numbers: a few integer and float updates per request, nothing else.

The concurrency integral is the area under the in-flight curve: at every change of the in-flight count
(and at every scrape) `integral += in_flight * (now - last)`. A counter built from it, sampled at any two
instants, differs by exactly the request-seconds spent in between, so `rate()` over a window is the true
average concurrency over that window, whatever the scrape timing: a 5 ms request between two scrapes
adds 0.005. Requests marked by the activator (PROXY_HEADER) are also integrated on their own, so the
scaler can count each request once.

Prometheus objects are built from a `Snapshot` only when scraped (see `queue_proxy.metrics`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kapa.core.contract import CODE_CLASSES
from kapa.core.histogram import bucket_index, empty_buckets


@dataclass(frozen=True)
class Snapshot:
    """The counters at one instant (all totals since start)."""

    at: float
    concurrency_seconds: float
    proxied_concurrency_seconds: float
    in_flight: int
    proxied_in_flight: int
    requests_by_class: dict[str, int]
    proxied_requests: int
    duration_bucket_counts: tuple[int, ...]  # per bucket of DURATION_BUCKETS_S, then +Inf; not cumulative
    duration_sum_s: float
    queue_depth: int
    queued: int
    rejected_by_reason: dict[str, int]


class RequestStats:
    """In-flight counts, their time integrals, completions by class and a duration histogram."""

    __slots__ = (
        "in_flight", "proxied_in_flight", "concurrency_seconds", "proxied_concurrency_seconds", "last_change",
        "last_arrival", "by_status_hundred", "proxied_requests", "bucket_counts", "duration_sum_s", "rejected",
        "queued",
    )

    def __init__(self, now: float | None = None) -> None:
        start = time.monotonic() if now is None else now
        self.in_flight = 0
        self.proxied_in_flight = 0
        self.concurrency_seconds = 0.0
        self.proxied_concurrency_seconds = 0.0
        self.last_change = start
        #: When the last request arrived (the drain waits for a quiet period).
        self.last_arrival = start
        #: Responses by status // 100 (index 0 holds nothing real, kept for cheap indexing).
        self.by_status_hundred = [0] * 6
        self.proxied_requests = 0
        self.bucket_counts = empty_buckets()
        self.duration_sum_s = 0.0
        self.rejected: dict[str, int] = {}
        #: Requests that had to wait for a concurrency slot (the limit was reached when they arrived).
        self.queued = 0

    def started(self, now: float, proxied: bool) -> None:
        """A request arrived at `now` (time.monotonic())."""
        elapsed = now - self.last_change
        self.concurrency_seconds += self.in_flight * elapsed
        self.proxied_concurrency_seconds += self.proxied_in_flight * elapsed
        self.last_change = now
        self.last_arrival = now
        self.in_flight += 1
        if proxied:
            self.proxied_in_flight += 1

    def finished(self, now: float, started_at: float, proxied: bool, status: int) -> None:
        """A request that `started` at `started_at` ended at `now` with `status` (what the client got)."""
        elapsed = now - self.last_change
        self.concurrency_seconds += self.in_flight * elapsed
        self.proxied_concurrency_seconds += self.proxied_in_flight * elapsed
        self.last_change = now
        self.in_flight -= 1
        if proxied:
            self.proxied_in_flight -= 1
            self.proxied_requests += 1
        self.by_status_hundred[status // 100 if 100 <= status < 600 else 5] += 1
        duration = now - started_at
        self.bucket_counts[bucket_index(duration)] += 1
        self.duration_sum_s += duration

    def count_response(self, status: int) -> None:
        """A response to a request that never became in flight (a malformed one)."""
        self.by_status_hundred[status // 100] += 1

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def snapshot(self, now: float, queue_depth: int = 0) -> Snapshot:
        """Bring the integrals up to `now` and copy every counter."""
        elapsed = now - self.last_change
        self.concurrency_seconds += self.in_flight * elapsed
        self.proxied_concurrency_seconds += self.proxied_in_flight * elapsed
        self.last_change = now
        return Snapshot(
            at=now,
            concurrency_seconds=self.concurrency_seconds,
            proxied_concurrency_seconds=self.proxied_concurrency_seconds,
            in_flight=self.in_flight,
            proxied_in_flight=self.proxied_in_flight,
            requests_by_class={name: self.by_status_hundred[i + 1] for i, name in enumerate(CODE_CLASSES)},
            proxied_requests=self.proxied_requests,
            duration_bucket_counts=tuple(self.bucket_counts),
            duration_sum_s=self.duration_sum_s,
            queue_depth=queue_depth,
            queued=self.queued,
            rejected_by_reason=dict(self.rejected),
        )
