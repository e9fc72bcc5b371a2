"""The activator's per-service metrics: plain integers on the request path, Prometheus families at scrape.

Counting costs an integer add per request; the families are built only when Prometheus asks (a custom
collector), as the queue-proxy does. Names and labels come from kapa.core.contract, with LABEL_COMPONENT set to
"activator" so the scaler can tell these series from the queue-proxies'. CONCURRENCY_SECONDS here is the
time integral of requests held *and* in flight in the activator: the scaler adds it to the queue-proxies'
and subtracts their proxied integral, so a request is counted once wherever it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from kapa.core import contract
from kapa.core.histogram import bucket_index, cumulative_buckets, empty_buckets
from kapa.core.services import ServiceKey

if TYPE_CHECKING:
    from activator.service import Service

_LABELS = [contract.LABEL_NAMESPACE, contract.LABEL_SERVICE, contract.LABEL_COMPONENT]


@dataclass(eq=False)
class ServiceStats:
    """Counters of one service, touched only on the event loop."""

    responses_by_class: list[int] = field(default_factory=lambda: [0] * len(contract.CODE_CLASSES))
    rejected: dict[str, int] = field(default_factory=dict)
    #: Non-cumulative counts per bucket of contract.DURATION_BUCKETS_S, plus one for +Inf.
    cold_start_buckets: list[int] = field(default_factory=empty_buckets)
    cold_start_sum_s: float = 0.0

    def count_response(self, status: int) -> None:
        index = status // 100 - 1
        if 0 <= index < len(contract.CODE_CLASSES):
            self.responses_by_class[index] += 1

    def count_rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def observe_cold_start(self, wait_s: float) -> None:
        self.cold_start_buckets[bucket_index(wait_s)] += 1
        self.cold_start_sum_s += wait_s


class ActivatorCollector(Collector):
    """Builds the families from the live services at each scrape; `scaling_only` serves the scaler's subset."""

    def __init__(
        self,
        services: Callable[[], Iterable[Service]],
        pokes: Mapping[ServiceKey, int],
        scaling_only: bool = False,
    ) -> None:
        self._services = services
        self._pokes = pokes
        self._scaling_only = scaling_only

    def collect(self) -> Iterator[Metric]:
        concurrency = CounterMetricFamily(
            contract.CONCURRENCY_SECONDS, "Time integral of requests held or in flight in the activator.", labels=_LABELS
        )
        requests = CounterMetricFamily(
            contract.REQUESTS, "Requests the activator answered, by code class.", labels=_LABELS + [contract.LABEL_CODE_CLASS]
        )
        services = list(self._services())
        for service in services:
            labels = _labels(service.settings.key)
            concurrency.add_metric(labels, service.throttler.occupancy_seconds())
            for code_class, count in zip(contract.CODE_CLASSES, service.stats.responses_by_class):
                if count:
                    requests.add_metric(labels + [code_class], count)
        yield concurrency
        yield requests
        if self._scaling_only:
            return
        yield from self._details(services)

    def _details(self, services: list[Service]) -> Iterator[Metric]:
        held = GaugeMetricFamily(contract.ACTIVATOR_HELD_REQUESTS, "Requests held waiting for a pod.", labels=_LABELS)
        in_flight = GaugeMetricFamily(
            contract.REQUESTS_IN_FLIGHT, "Requests forwarded and not yet answered.", labels=_LABELS
        )
        ready = GaugeMetricFamily(contract.ACTIVATOR_READY_PODS, "Pods probed ready.", labels=_LABELS)
        rejected = CounterMetricFamily(
            contract.REJECTED_REQUESTS, "Requests refused before reaching a pod, by reason.",
            labels=_LABELS + [contract.LABEL_REASON],
        )
        pokes = CounterMetricFamily(contract.ACTIVATOR_POKES, "Pokes a scaler accepted.", labels=_LABELS)
        cold_start = HistogramMetricFamily(
            contract.ACTIVATOR_COLD_START_WAIT, "Wait of requests that arrived while no pod was ready.", labels=_LABELS
        )
        for service in services:
            key, stats, throttler = service.settings.key, service.stats, service.throttler
            labels = _labels(key)
            held.add_metric(labels, throttler.held)
            in_flight.add_metric(labels, throttler.in_flight)
            ready.add_metric(labels, throttler.ready_count)
            for reason, count in sorted(stats.rejected.items()):
                rejected.add_metric(labels + [reason], count)
            pokes.add_metric(labels, self._pokes.get(key, 0))
            cold_start.add_metric(labels, cumulative_buckets(stats.cold_start_buckets), stats.cold_start_sum_s)
        yield from (held, in_flight, ready, rejected, pokes, cold_start)


def _labels(key: ServiceKey) -> list[str]:
    return [key.namespace, key.name, contract.COMPONENT_ACTIVATOR]
