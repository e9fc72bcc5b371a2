"""Prometheus exposition of `RequestStats`, built only when scraped.

METRICS_PATH serves every metric of the contract; SCALING_METRICS_PATH only contract.SCALING_METRICS,
which Prometheus scrapes every second. Every series carries LABEL_NAMESPACE, LABEL_SERVICE and
LABEL_COMPONENT=queue-proxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from kapa.core import contract
from kapa.core.histogram import cumulative_buckets
from kapa.relay import Route
from queue_proxy.stats import RequestStats, Snapshot

_BASE_LABELS = [contract.LABEL_NAMESPACE, contract.LABEL_SERVICE, contract.LABEL_COMPONENT]
#: Every reason the queue-proxy rejects for, exported from the start so rate() has a baseline.
REJECT_REASONS = (
    contract.REASON_QUEUE_FULL, contract.REASON_TIMEOUT, contract.REASON_BAD_REQUEST, contract.REASON_UPSTREAM_ERROR,
)


class StatsCollector(Collector):
    """Reads a snapshot per scrape and yields the metric families named in `names`."""

    def __init__(
        self, stats: RequestStats, queue_depth: Callable[[], int], namespace: str, service: str,
        names: tuple[str, ...],
    ) -> None:
        self._stats = stats
        self._queue_depth = queue_depth
        self._labels = [namespace, service, contract.COMPONENT_QUEUE_PROXY]
        self._names = names

    def collect(self) -> Iterator[Metric]:
        snap = self._stats.snapshot(time.monotonic(), self._queue_depth())
        for name in self._names:
            yield self._family(name, snap)

    def _family(self, name: str, snap: Snapshot) -> Metric:
        labels = self._labels
        if name == contract.CONCURRENCY_SECONDS:
            return _counter(name, "Time integral of in-flight requests (request-seconds).", labels,
                            snap.concurrency_seconds)
        if name == contract.PROXIED_CONCURRENCY_SECONDS:
            return _counter(name, "Time integral of in-flight requests that came through the activator.", labels,
                            snap.proxied_concurrency_seconds)
        if name == contract.PROXIED_REQUESTS:
            return _counter(name, "Requests answered that came through the activator.", labels,
                            snap.proxied_requests)
        if name == contract.REQUESTS:
            by_class = CounterMetricFamily(
                name, "Requests answered, by response code class.", labels=[*_BASE_LABELS, contract.LABEL_CODE_CLASS]
            )
            for code_class, count in snap.requests_by_class.items():
                by_class.add_metric([*labels, code_class], count)
            return by_class
        if name == contract.REJECTED_REQUESTS:
            by_reason = CounterMetricFamily(
                name, "Requests refused or failed by the queue-proxy itself, by reason.",
                labels=[*_BASE_LABELS, contract.LABEL_REASON],
            )
            for reason in REJECT_REASONS:
                by_reason.add_metric([*labels, reason], snap.rejected_by_reason.get(reason, 0))
            return by_reason
        if name == contract.REQUEST_DURATION:
            histogram = HistogramMetricFamily(name, "Request duration at the queue-proxy.", labels=_BASE_LABELS)
            histogram.add_metric(labels, cumulative_buckets(snap.duration_bucket_counts), snap.duration_sum_s)
            return histogram
        if name == contract.REQUESTS_IN_FLIGHT:
            return _gauge(name, "Requests inside the queue-proxy (waiting or at the app).", labels, snap.in_flight)
        if name == contract.QUEUE_DEPTH:
            return _gauge(name, "Requests waiting for a concurrency slot.", labels, snap.queue_depth)
        if name == contract.QUEUED_REQUESTS:
            return _counter(name, "Requests that waited for a concurrency slot.", labels, snap.queued)
        raise KeyError(f"the queue-proxy does not export {name}")


def _counter(name: str, documentation: str, labels: list[str], value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=_BASE_LABELS)
    family.add_metric(labels, value)
    return family


def _gauge(name: str, documentation: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=_BASE_LABELS)
    family.add_metric(labels, value)
    return family


ALL_METRICS = (
    contract.CONCURRENCY_SECONDS, contract.PROXIED_CONCURRENCY_SECONDS, contract.REQUESTS, contract.PROXIED_REQUESTS,
    contract.REQUEST_DURATION, contract.REQUESTS_IN_FLIGHT, contract.QUEUE_DEPTH, contract.QUEUED_REQUESTS,
    contract.REJECTED_REQUESTS,
)


def metric_routes(
    stats: RequestStats, queue_depth: Callable[[], int], namespace: str, service: str
) -> dict[str, Route]:
    """The routes of the metrics port."""

    def exposition(names: tuple[str, ...]) -> Route:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(stats, queue_depth, namespace, service, names))

        def serve() -> tuple[int, str, bytes]:
            return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

        return serve

    return {
        contract.METRICS_PATH: exposition(ALL_METRICS),
        contract.SCALING_METRICS_PATH: exposition(contract.SCALING_METRICS),
    }
