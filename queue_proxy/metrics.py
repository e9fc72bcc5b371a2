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

from kapa import contract
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
            family = CounterMetricFamily(name, "Time integral of in-flight requests (request-seconds).", labels=_BASE_LABELS)
            family.add_metric(labels, snap.concurrency_seconds)
        elif name == contract.PROXIED_CONCURRENCY_SECONDS:
            family = CounterMetricFamily(
                name, "Time integral of in-flight requests that came through the activator.", labels=_BASE_LABELS
            )
            family.add_metric(labels, snap.proxied_concurrency_seconds)
        elif name == contract.REQUESTS:
            family = CounterMetricFamily(
                name, "Requests answered, by response code class.", labels=[*_BASE_LABELS, contract.LABEL_CODE_CLASS]
            )
            for code_class, count in snap.requests_by_class.items():
                family.add_metric([*labels, code_class], count)
        elif name == contract.PROXIED_REQUESTS:
            family = CounterMetricFamily(name, "Requests answered that came through the activator.", labels=_BASE_LABELS)
            family.add_metric(labels, snap.proxied_requests)
        elif name == contract.REQUEST_DURATION:
            family = HistogramMetricFamily(name, "Request duration at the queue-proxy.", labels=_BASE_LABELS)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*contract.DURATION_BUCKETS_S, float("inf")), snap.duration_bucket_counts):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric(labels, buckets, snap.duration_sum_s)
        elif name == contract.REQUESTS_IN_FLIGHT:
            family = GaugeMetricFamily(name, "Requests inside the queue-proxy (waiting or at the app).", labels=_BASE_LABELS)
            family.add_metric(labels, snap.in_flight)
        elif name == contract.QUEUE_DEPTH:
            family = GaugeMetricFamily(name, "Requests waiting for a concurrency slot.", labels=_BASE_LABELS)
            family.add_metric(labels, snap.queue_depth)
        elif name == contract.REJECTED_REQUESTS:
            family = CounterMetricFamily(
                name, "Requests refused or failed by the queue-proxy itself, by reason.",
                labels=[*_BASE_LABELS, contract.LABEL_REASON],
            )
            for reason in REJECT_REASONS:
                family.add_metric([*labels, reason], snap.rejected_by_reason.get(reason, 0))
        else:
            raise KeyError(f"the queue-proxy does not export {name}")
        return family


ALL_METRICS = (
    contract.CONCURRENCY_SECONDS, contract.PROXIED_CONCURRENCY_SECONDS, contract.REQUESTS, contract.PROXIED_REQUESTS,
    contract.REQUEST_DURATION, contract.REQUESTS_IN_FLIGHT, contract.QUEUE_DEPTH, contract.REJECTED_REQUESTS,
)


def metric_routes(stats: RequestStats, queue_depth: Callable[[], int], namespace: str, service: str) -> dict[str, Route]:
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
