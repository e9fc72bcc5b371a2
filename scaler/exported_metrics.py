"""The scaler's own Prometheus metrics (kapa_scaler_*), served on its HTTP port at /metrics.

Per-service gauges are built from the latest decisions at scrape time (a custom collector) rather than set
every tick: nothing to update on the hot path, and a service removed from the catalog disappears from the
next scrape instead of leaving a stale series behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kapa.core import contract
from kapa.core.services import ServiceKey
from scaler.decision import Decision

_LABELS = (contract.LABEL_NAMESPACE, contract.LABEL_SERVICE)
_TICK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class _DecisionCollector(Collector):
    def __init__(self, decisions: Callable[[], Mapping[ServiceKey, Decision]], source_stale: Callable[[], bool]) -> None:
        self._decisions = decisions
        self._source_stale = source_stale

    def collect(self) -> Iterator[Metric]:
        families = {
            "desired": GaugeMetricFamily(contract.SCALER_DESIRED_PODS, "Pods the last decision asked for.", labels=_LABELS),
            "ready": GaugeMetricFamily(contract.SCALER_READY_PODS, "Ready pods the last decision saw.", labels=_LABELS),
            "stable": GaugeMetricFamily(
                contract.SCALER_OBSERVED_STABLE, "Observed total over the stable window.", labels=_LABELS
            ),
            "panic": GaugeMetricFamily(
                contract.SCALER_OBSERVED_PANIC, "Observed total over the panic window.", labels=_LABELS
            ),
            "target": GaugeMetricFamily(contract.SCALER_TARGET, "Per-pod target.", labels=_LABELS),
            "panic_mode": GaugeMetricFamily(contract.SCALER_PANIC_MODE, "1 while in panic mode.", labels=_LABELS),
            "proxy_mode": GaugeMetricFamily(
                contract.SCALER_PROXY_MODE, "1 while the activator is in the request path.", labels=_LABELS
            ),
            "ebc": GaugeMetricFamily(
                contract.SCALER_EXCESS_BURST_CAPACITY, "Excess burst capacity (Knative).", labels=_LABELS
            ),
            "stale": GaugeMetricFamily(
                contract.SCALER_STALE, "1 when the decision was held for lack of fresh metrics.", labels=_LABELS
            ),
        }
        for key, decision in sorted(self._decisions().items()):
            labels = [key.namespace, key.name]
            families["desired"].add_metric(labels, decision.desired_pods)
            families["ready"].add_metric(labels, decision.ready_pods)
            if decision.stable_value is not None:
                families["stable"].add_metric(labels, decision.stable_value)
            if decision.panic_value is not None:
                families["panic"].add_metric(labels, decision.panic_value)
            families["target"].add_metric(labels, decision.target)
            families["panic_mode"].add_metric(labels, float(decision.panic_mode))
            families["proxy_mode"].add_metric(labels, float(decision.mode == contract.MODE_PROXY))
            families["ebc"].add_metric(labels, decision.excess_burst_capacity)
            families["stale"].add_metric(labels, float(decision.stale))
        yield from families.values()
        yield GaugeMetricFamily(
            contract.SCALER_METRICS_SOURCE_STALE,
            "1 when the last tick could not read the metrics source (Prometheus).",
            value=float(self._source_stale()),
        )


class ScalerTelemetry:
    """The scaler's metrics registry: decision gauges, tick latency, pokes. One per Scaler (tests run several)."""

    def __init__(
        self, decisions: Callable[[], Mapping[ServiceKey, Decision]], source_stale: Callable[[], bool]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.tick_seconds = Histogram(
            contract.SCALER_TICK_DURATION,
            "Time to observe and decide for all services in one tick.",
            buckets=_TICK_BUCKETS_S,
            registry=self.registry,
        )
        self.pokes = Counter(
            contract.SCALER_POKES, "Demand signals received from the activator.", _LABELS, registry=self.registry
        )
        self.registry.register(_DecisionCollector(decisions, source_stale))

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)
