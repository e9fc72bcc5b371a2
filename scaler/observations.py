"""What the scaler observes each tick, and the interfaces of the parts that observe it.

A metrics source answers, for every (metric, window) the services need, one value per service; a ready-pod
counter says how many pods each service has. The loop turns both into the `Observation` the pure decision
takes. Prometheus is the default for both (scaler.prometheus_source); the local mode plugs in an exact
ready-pod counter of its own, and on Kubernetes the ready endpoints of EndpointSlices count
(scaler.kubernetes.EndpointSliceReadyPods).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from kapa.core import contract
from kapa.core.services import ServiceKey
from kapa.core.settings import AGGREGATION_LINEAR
from scaler.policy import LoadHistory

#: rate() needs two samples inside its range, and with scrapes every SCALING_SCRAPE_INTERVAL_S a range much
#: shorter than three intervals often holds only one. Shorter windows (a 6 s stable window at 10 % gives a
#: 0.6 s panic window) are widened to this, rather than never having data.
MIN_QUERY_WINDOW_S = 3.0 * contract.SCALING_SCRAPE_INTERVAL_S


@dataclass(frozen=True, order=True)
class WindowQuery:
    """One metric averaged over one window, linearly or with Knative's weighted-exponential average
    (`metric-aggregation-algorithm`): services sharing all three are answered by one query."""

    metric: str
    window_s: float
    aggregation: str = AGGREGATION_LINEAR

    @classmethod
    def for_window(cls, metric: str, window_s: float, aggregation: str = AGGREGATION_LINEAR) -> WindowQuery:
        """The query for a configured window, widened to MIN_QUERY_WINDOW_S if shorter."""
        return cls(metric, max(window_s, MIN_QUERY_WINDOW_S), aggregation)


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every value one tick observed. `stale` means the source could not answer: nothing here is known."""

    at: float
    values: Mapping[WindowQuery, Mapping[ServiceKey, float]] = field(default_factory=dict)
    ready_pods: Mapping[ServiceKey, int] = field(default_factory=dict)
    stale: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "ready_pods", MappingProxyType(dict(self.ready_pods)))

    @classmethod
    def unavailable(cls, at: float) -> MetricsSnapshot:
        return cls(at=at, stale=True)


def observed_value(snapshot: MetricsSnapshot, query: WindowQuery, key: ServiceKey, ready_pods: int) -> float | None:
    """The service's value for `query`, or None when the snapshot does not know it.

    A service missing from a fresh answer is "no data", never zero traffic: its pods may not have been
    scraped twice yet, or a scrape may have failed, and reading that as zero would scale a busy service
    down. One exception: a service with no ready pods and no series at all has nothing in flight anywhere.
    Its queue-proxies are gone, and the activator exports the concurrency of every request it holds or
    forwards (as soon as it holds one), so a held request would make the series present. Then the value
    is a true 0, which lets a service that has never had traffic (or has just been scaled to zero) settle
    at zero instead of being stuck on "no data". A stale snapshot (Prometheus unreachable) knows nothing.
    """
    if snapshot.stale:
        return None
    value = snapshot.values.get(query, {}).get(key)
    if value is None and ready_pods == 0:
        return 0.0
    return value


def existed_before(
    snapshot: MetricsSnapshot, queries: Iterable[WindowQuery], key: ServiceKey, replicas: int | None
) -> bool:
    """Evidence, at the scaler's first decision for a service, that the service ran before this scaler saw
    it, so that initial-scale (which Knative applies only when a revision is created) is not applied again
    by a restarted scaler. Either counts:

    - activity in a fresh snapshot: a value above zero in some window, so it had requests moments ago. A
      series that is present but zero proves nothing: the activator exports a zero series for every service
      it routes from its own start, so a brand-new service has one too;
    - its workload set to zero replicas (`replicas`, from the catalog when it knows it): scaled to zero
      before, by Kapa or by its owner, and to stay there until a request arrives.

    Ready pods are the third sign; the decision checks them itself. Every input is shared by all scaler
    replicas (the same Prometheus at the same tick time, the same API server), so they agree.
    """
    if replicas == 0:
        return True
    return not snapshot.stale and any(snapshot.values.get(query, {}).get(key, 0.0) > 0 for query in queries)


class MetricsSource(Protocol):
    """Answers all of a tick's window queries at once; never raises for an unreachable backend (stale)."""

    async def observe(self, queries: Collection[WindowQuery], at: float) -> MetricsSnapshot: ...


@runtime_checkable
class LoadHistorySource(Protocol):
    """Each service's recent load, which the predictive policy learns from (a metrics source may offer it:
    PrometheusMetrics does). Never raises for an unreachable backend: the answer is then empty."""

    async def load_histories(self, keys: Collection[ServiceKey], at: float) -> Mapping[ServiceKey, LoadHistory]: ...


class ReadyPodCounter(Protocol):
    """How many ready pods a service has right now; None when that is not known."""

    def ready_pods(self, key: ServiceKey) -> int | None: ...
