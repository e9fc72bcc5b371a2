"""Observed concurrency, requests per second and ready pods for every service, from Prometheus.

Per tick the scaler sends one instant query per distinct (metric, window) pair for all services together
(60 s stable and 6 s panic: two queries, whatever the number of services) plus one that counts ready pods,
all concurrently, all evaluated at the tick's time so replicas of the scaler see the same data.

Counting each request once (Knative's "recorded value = concurrency - proxied concurrency"): the activator
exports CONCURRENCY_SECONDS for every request it holds or forwards, and a queue-proxy also exports
PROXIED_CONCURRENCY_SECONDS for the requests that reached it through the activator. The service's
concurrency is therefore sum(rate(concurrency)) - sum(rate(proxied)), over every component. The same holds
for REQUESTS and PROXIED_REQUESTS. When no request ever came through the activator the proxied side is
absent and `A - B` would be empty, hence `... or A`. Scrapes of the two components are not simultaneous,
so the difference is clamped at zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

import aiohttp

from kapa import contract
from kapa.log import get_logger
from kapa.services import ServiceKey
from scaler.observations import MetricsSnapshot, WindowQuery

log = get_logger(__name__)

_BY = f"{contract.LABEL_NAMESPACE}, {contract.LABEL_SERVICE}"

#: (counted, proxied) counters per scaling metric.
_COUNTERS: Mapping[str, tuple[str, str]] = {
    contract.METRIC_CONCURRENCY: (contract.CONCURRENCY_SECONDS, contract.PROXIED_CONCURRENCY_SECONDS),
    contract.METRIC_RPS: (contract.REQUESTS, contract.PROXIED_REQUESTS),
}


class PrometheusQueryError(RuntimeError):
    """Prometheus answered, but not with a usable result."""


def promql_duration(seconds: float) -> str:
    """A PromQL range in whole milliseconds (windows like 0.6 s or 6.5 s exist after percentages)."""
    return f"{max(1, round(seconds * 1000))}ms"


def _sum_rate(counter: str, window: str) -> str:
    return f"sum by ({_BY}) (rate({counter}[{window}]))"


def window_promql(query: WindowQuery) -> str:
    """The query for one metric over one window: per-service totals, each request counted once.

    For rps, a pod that has answered no request yet exports no REQUESTS series (they are per code class),
    so services whose queue-proxies are up but idle are filled in with 0 from the concurrency counter,
    which every queue-proxy exports from its start: an idle service must read 0, not "no data".
    """
    if query.metric not in _COUNTERS:
        raise ValueError(f"unknown scaling metric {query.metric!r}")
    counted, proxied = _COUNTERS[query.metric]
    window = promql_duration(query.window_s)
    total, total_proxied = _sum_rate(counted, window), _sum_rate(proxied, window)
    promql = f"clamp_min({total} - {total_proxied}, 0) or {total}"
    if query.metric == contract.METRIC_RPS:
        promql += f" or 0 * {_sum_rate(contract.CONCURRENCY_SECONDS, window)}"
    return promql


def ready_pods_promql() -> str:
    """Pods per service whose queue-proxy's last scrape succeeded.

    Every queue-proxy exports CONCURRENCY_SECONDS from its start; a pod whose scrape fails or that left
    service discovery gets a staleness marker and drops out of an instant query at once. This counts live
    queue-proxies, which is close to (not exactly) ready pods: a draining pod still counts until it exits.
    """
    component = f'{contract.LABEL_COMPONENT}!="{contract.COMPONENT_ACTIVATOR}"'
    return f"count by ({_BY}) ({contract.CONCURRENCY_SECONDS}{{{component}}})"


def parse_vector(body: object) -> dict[ServiceKey, float]:
    """Per-service values from a /api/v1/query answer; NaN and series without service labels are skipped."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else body
        raise PrometheusQueryError(f"query failed: {error}")
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusQueryError(f"expected an instant vector, got {data.get('resultType')!r}")
    values: dict[ServiceKey, float] = {}
    for sample in data.get("result", []):
        labels = sample.get("metric", {})
        namespace, name = labels.get(contract.LABEL_NAMESPACE), labels.get(contract.LABEL_SERVICE)
        if not namespace or not name:
            continue
        value = float(sample["value"][1])
        if value == value:  # NaN != NaN
            values[ServiceKey(namespace, name)] = value
    return values


class PrometheusMetrics:
    """MetricsSource and ReadyPodCounter over Prometheus's HTTP API.

    When Prometheus is unreachable, slow (past `timeout_s`) or answers an error, the tick's snapshot is
    stale: no value is known, the scaler holds its decisions. The outage is logged once when it starts and
    once when it ends, not every tick; the next tick simply tries again.
    """

    def __init__(self, url: str, timeout_s: float = 1.5) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._last = MetricsSnapshot.unavailable(0.0)
        self._failing_since: float | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def query(self, promql: str, at: float) -> dict[ServiceKey, float]:
        """One instant query evaluated at `at` (Unix seconds)."""
        params = {"query": promql, "time": f"{at:.3f}"}
        async with self._client().post(f"{self.url}/api/v1/query", data=params) as response:
            if response.content_type != "application/json":
                raise PrometheusQueryError(f"HTTP {response.status}: {(await response.text())[:200]}")
            return parse_vector(await response.json())

    async def observe(self, queries: Collection[WindowQuery], at: float) -> MetricsSnapshot:
        ordered = sorted(set(queries))
        try:
            answers = await asyncio.gather(
                self.query(ready_pods_promql(), at), *(self.query(window_promql(query), at) for query in ordered)
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, PrometheusQueryError, ValueError, KeyError) as error:
            if self._failing_since is None:
                self._failing_since = at
                log.warning(
                    "prometheus unavailable; holding decisions until it answers",
                    url=self.url,
                    error=str(error) or type(error).__name__,
                )
            self._last = MetricsSnapshot.unavailable(at)
            return self._last
        if self._failing_since is not None:
            log.info("prometheus answers again", url=self.url, outage_s=round(at - self._failing_since, 1))
            self._failing_since = None
        ready, *values = answers
        self._last = MetricsSnapshot(
            at=at,
            values=dict(zip(ordered, values)),
            ready_pods={key: int(count) for key, count in ready.items()},
        )
        return self._last

    def ready_pods(self, key: ServiceKey) -> int | None:
        """Live queue-proxies of the service at the last tick; None while Prometheus cannot say."""
        if self._last.stale:
            return None
        return self._last.ready_pods.get(key, 0)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
