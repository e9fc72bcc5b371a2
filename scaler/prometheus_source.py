"""Observed concurrency, requests per second and ready pods for every service, from Prometheus.

Per tick the scaler sends one instant query per distinct (metric, window) pair for all services together
(60 s stable and 6 s panic: two queries, whatever the number of services) plus one that counts ready pods,
all concurrently, all evaluated at the tick's time so replicas of the scaler see the same data. When a
service has the predictive policy, one range query more fetches the load history it learns from
(`load_histories`): the last hour once, then each tick only the steps since the last.

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
import math
from collections import deque
from collections.abc import Collection, Mapping

import aiohttp

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.core.services import ServiceKey
from kapa.core.settings import AGGREGATION_WEIGHTED_EXPONENTIAL
from scaler.decision import TICK_INTERVAL_S
from scaler.observations import MIN_QUERY_WINDOW_S, MetricsSnapshot, WindowQuery
from scaler.policy import HISTORY_S, LoadHistory
from scaler.windows import BucketSeries, window_buckets

log = get_logger(__name__)

_BY = f"{contract.LABEL_NAMESPACE}, {contract.LABEL_SERVICE}"

#: (counted, proxied) counters per scaling metric.
_COUNTERS: Mapping[str, tuple[str, str]] = {
    contract.METRIC_CONCURRENCY: (contract.CONCURRENCY_SECONDS, contract.PROXIED_CONCURRENCY_SECONDS),
    contract.METRIC_RPS: (contract.REQUESTS, contract.PROXIED_REQUESTS),
}


#: One value of a load history per decision tick.
HISTORY_STEP_S = TICK_INTERVAL_S


class PrometheusQueryError(RuntimeError):
    """Prometheus answered, but not with a usable result."""


#: What a query to a Prometheus that is down, slow or confused raises.
_QUERY_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, PrometheusQueryError, ValueError, KeyError)


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
    return _totals_promql(query.metric, "rate", promql_duration(query.window_s))


def bucket_promql(metric: str) -> str:
    """The last one-second bucket of a metric per service, as Knative keeps its buckets: irate() is the
    increase between the last two samples, and with the scaling counters scraped every second that is the
    average over that second (of a concurrency-seconds integral: the exact average concurrency). The range
    only bounds how far back the two samples may be."""
    return _totals_promql(metric, "irate", promql_duration(MIN_QUERY_WINDOW_S))


def _totals_promql(metric: str, function: str, window: str) -> str:
    if metric not in _COUNTERS:
        raise ValueError(f"unknown scaling metric {metric!r}")
    counted, proxied = _COUNTERS[metric]

    def total(counter: str) -> str:
        return f"sum by ({_BY}) ({function}({counter}[{window}]))"

    promql = f"clamp_min({total(counted)} - {total(proxied)}, 0) or {total(counted)}"
    if metric == contract.METRIC_RPS:
        promql += f" or 0 * {total(contract.CONCURRENCY_SECONDS)}"
    return promql


def history_promql() -> str:
    """Requests in flight per service, every component's (the activator's held ones too), averaged over each
    history step, or over MIN_QUERY_WINDOW_S where a step is shorter (rate() needs two samples).

    The predictive policy only tells zero from not zero, so a forwarded request counted both by the
    activator and by a pod does no harm, and nothing is subtracted.
    """
    return _sum_rate(contract.CONCURRENCY_SECONDS, promql_duration(max(HISTORY_STEP_S, MIN_QUERY_WINDOW_S)))


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


def parse_matrix(body: object, step_s: float) -> dict[ServiceKey, dict[int, float]]:
    """Per-service values by step number (time / step_s) from a /api/v1/query_range answer; NaN and series
    without service labels are skipped."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else body
        raise PrometheusQueryError(f"query failed: {error}")
    data = body.get("data") or {}
    if data.get("resultType") != "matrix":
        raise PrometheusQueryError(f"expected a range vector, got {data.get('resultType')!r}")
    values: dict[ServiceKey, dict[int, float]] = {}
    for series in data.get("result", []):
        labels = series.get("metric", {})
        namespace, name = labels.get(contract.LABEL_NAMESPACE), labels.get(contract.LABEL_SERVICE)
        if not namespace or not name:
            continue
        points = values.setdefault(ServiceKey(namespace, name), {})
        for time_s, value in series.get("values", []):
            number = float(value)
            if not math.isnan(number):
                points[round(float(time_s) / step_s)] = number
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
        #: The load history of every service, oldest step first: (step number, the services with load then).
        self._history: deque[tuple[int, Mapping[ServiceKey, float]]] = deque()

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

    async def query_range(self, promql: str, start: float, end: float, step_s: float) -> dict[ServiceKey, dict[int, float]]:
        """One range query from `start` to `end` (Unix seconds) every `step_s`; values by step number."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        async with self._client().post(f"{self.url}/api/v1/query_range", data=params) as response:
            if response.content_type != "application/json":
                raise PrometheusQueryError(f"HTTP {response.status}: {(await response.text())[:200]}")
            return parse_matrix(await response.json(), step_s)

    async def load_histories(self, keys: Collection[ServiceKey], at: float) -> dict[ServiceKey, LoadHistory]:
        """The last HISTORY_S of each service's load, one value per HISTORY_STEP_S up to `at` (a tick time):
        what the predictive policy learns from (scaler.policy). A step where a service has no series is 0:
        no component had a request of it in flight (the activator exports every request it holds).

        One range query for all services per call, over the steps not fetched before: the whole hour the
        first time, then the step or two since the last tick. The steps kept are exactly what one query over
        the hour would answer (each is evaluated at its own time, QUERY_DELAY_S before the tick queries), so
        a restarted scaler or a second replica learns from the same history. Prometheus unreachable or
        failing: no history this time (the policy leaves Knative's decision alone), and the next call
        fetches every step missed.
        """
        last = math.floor(at / HISTORY_STEP_S)
        first = last - round(HISTORY_S / HISTORY_STEP_S) + 1
        while self._history and self._history[0][0] < first:
            self._history.popleft()
        start = self._history[-1][0] + 1 if self._history else first
        if start <= last:
            try:
                answer = await self.query_range(
                    history_promql(), start * HISTORY_STEP_S, last * HISTORY_STEP_S, HISTORY_STEP_S
                )
            except _QUERY_ERRORS as error:
                log.debug("no load history this tick", url=self.url, error=str(error) or type(error).__name__)
                return {}
            with_load: dict[int, dict[ServiceKey, float]] = {step: {} for step in range(start, last + 1)}
            for key, points in answer.items():
                for step, value in points.items():
                    if value > 0.0 and step in with_load:
                        with_load[step][key] = value
            self._history.extend(with_load.items())
        steps = tuple(self._history)
        return {key: LoadHistory(HISTORY_STEP_S, tuple(loads.get(key, 0.0) for _, loads in steps)) for key in keys}

    async def observe(self, queries: Collection[WindowQuery], at: float) -> MetricsSnapshot:
        ordered = sorted(set(queries))
        try:
            answers = await asyncio.gather(
                self.query(ready_pods_promql(), at), *(self._window_values(query, at) for query in ordered)
            )
        except _QUERY_ERRORS as error:
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

    async def _window_values(self, query: WindowQuery, at: float) -> dict[ServiceKey, float]:
        """Each service's average over the window: rate() over it when linear; Knative's weighted-exponential
        average (scaler.windows, the simulator's code) of the window's one-second buckets otherwise, from
        one range query. Seconds with no bucket (no samples) are left out, as a partial window is."""
        if query.aggregation != AGGREGATION_WEIGHTED_EXPONENTIAL:
            return await self.query(window_promql(query), at)
        buckets = window_buckets(query.window_s)
        answer = await self.query_range(bucket_promql(query.metric), at - buckets + 1, at, 1.0)
        averages = {}
        for key, points in answer.items():
            series = BucketSeries([points[step] for step in sorted(points)])
            average = series.average(len(series), buckets, AGGREGATION_WEIGHTED_EXPONENTIAL)
            if average is not None:
                averages[key] = average
        return averages

    def ready_pods(self, key: ServiceKey) -> int | None:
        """Live queue-proxies of the service at the last tick; None while Prometheus cannot say."""
        if self._last.stale:
            return None
        return self._last.ready_pods.get(key, 0)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
