"""Every panel of the Grafana dashboard shows data after real traffic (issue 6).

The local mode's own harness runs `kapa up`: a real Prometheus, the scaler, the activator and replicas of the
sample app behind their queue-proxies. The service starts with one replica and is left to scale to zero;
then the first requests of the load are held by the activator and wait for a cold start, and the rest of
the load (20 concurrent requests against a target of 10) scales it up and fills the latency histograms.
(Not initial-scale 0: `kapa up` adds the activator to Prometheus's targets with the first replica, and a
rate() of its cold-start histogram needs a scrape from before the first cold start.) Then each panel's PromQL,
with Grafana's variables filled in as Grafana would for a dashboard whose time range starts with the test (so
$__range covers every sample the stack's Prometheus holds), goes to that Prometheus: instant queries for the
stat panels (as Grafana asks them) and for gauges, range queries over the time range for rate() panels, as a
time-series panel draws them. Each must return at least one series with a finite value (0 counts: "not in
panic" is data; NaN, as histogram_quantile gives over empty buckets, is not).

Bounded: a 6 s stable window (the annotation) and grace period (the config), a 20 s load, and polling that stops as soon as every panel
has data (the activator's, the scaler's and the queue-proxies' histograms are scraped every 15 s, so a rate
needs a scrape before and one after the traffic).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kapa.core import contract
from kapa.core.contract import knative_annotation
from kapa.local.prometheus import DEFAULT_BINARY
from kapa.tools import chartgen
from tests.charts.test_dashboard import interval_variables, query_panels, query_variables, substitute
from tests.local.harness import KapaUp, hello_services

needs_prometheus = pytest.mark.skipif(
    not os.access(DEFAULT_BINARY, os.X_OK), reason="needs Prometheus: apt-get install prometheus (scripts/setup.sh)"
)

NAMESPACE, SERVICE = "default", "hello"
WINDOW_S = GRACE_S = 6  # Knative's minimum for both
ANNOTATIONS = {
    knative_annotation("target"): "10",
    knative_annotation("window"): f"{WINDOW_S}s",
    knative_annotation("panic-window-percentage"): "50",
}
CONFIG = {"scale-to-zero-grace-period": f"{GRACE_S}s"}
LOAD_CONCURRENCY = 20
LOAD_S = 20.0
#: Grafana's default scrape interval for a Prometheus data source; it derives $__rate_interval from it.
GRAFANA_SCRAPE_INTERVAL_S = contract.METRICS_SCRAPE_INTERVAL_S
STEP_S = 1
#: One replica ready and scraped, then a stable window and the grace period without traffic.
ZERO_TIMEOUT_S = 45.0
#: One 15 s scrape of everything (after Prometheus's 5 s discovery batch), with room for a loaded machine.
FIRST_SCRAPE_TIMEOUT_S = 30.0
#: After the load: the next 15 s scrape of each replica and of the activator, with the same room.
DATA_TIMEOUT_S = 35.0
_RANGE_FUNCTION = re.compile(r"\b(?:rate|irate|increase)\(")
_EXPLAIN = re.compile(r"Explain:\s+http://([\d.]+:\d+)/")


@dataclass(frozen=True)
class Target:
    """One query of one panel, as Grafana sends it to Prometheus."""

    panel: str
    ref_id: str
    promql: str
    #: Grafana asks for the last point only (the stat panels' targets).
    instant: bool = False

    @property
    def over_range(self) -> bool:
        return not self.instant and bool(_RANGE_FUNCTION.search(self.promql))

    def __str__(self) -> str:
        return f"panel {self.panel!r} target {self.ref_id}: {self.promql}"


def finite_series(result: list[dict[str, Any]]) -> int:
    """How many series of an instant ("value") or range ("values") result have at least one finite number."""
    return sum(
        1 for series in result
        if any(math.isfinite(float(v)) for _, v in ([series["value"]] if "value" in series else series["values"]))
    )


class PrometheusApi:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url

    async def _get(self, path: str, params: Mapping[str, str]) -> Any:
        async with self._session.get(f"{self._url}{path}", params=params) as response:
            body = await response.json()
        assert response.status == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    async def instant(self, promql: str) -> list[dict[str, Any]]:
        data = await self._get("/api/v1/query", {"query": promql})
        return list(data["result"])

    async def range(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        data = await self._get(
            "/api/v1/query_range", {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{STEP_S}s"}
        )
        return list(data["result"])

    async def label_values(self, label: str, selector: str) -> list[str]:
        """What Grafana's label_values(selector, label) offers (it asks this same endpoint)."""
        return list(await self._get(f"/api/v1/label/{label}/values", {"match[]": selector}))


async def variable_values(prometheus: PrometheusApi, dashboard: dict[str, Any]) -> dict[str, str]:
    """Each query variable resolved in order as Grafana does, checked to offer the service, then set to it."""
    chosen = {"namespace": NAMESPACE, "service": SERVICE}
    values: dict[str, str] = {}
    for variable in query_variables(dashboard):
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", substitute(variable["query"]["query"], values))
        assert match, f"variable ${variable['name']}: not a label_values() query: {variable['query']['query']}"
        offered = await prometheus.label_values(match.group(2), match.group(1))
        assert chosen[variable["name"]] in offered, f"variable ${variable['name']} offers {offered}"
        values[variable["name"]] = chosen[variable["name"]]
    assert set(values) == set(chosen), values
    return values


def panel_targets(dashboard: dict[str, Any], values: Mapping[str, str], range_s: float) -> list[Target]:
    """Each panel's queries with the variables filled in, for a time range of the last `range_s` seconds."""
    values = {**values, **interval_variables(STEP_S, range_s, GRAFANA_SCRAPE_INTERVAL_S)}
    return [
        Target(panel["title"], target["refId"], substitute(target["expr"], values), bool(target.get("instant")))
        for panel in query_panels(dashboard) for target in panel["targets"]
    ]


def _abridged(series: dict[str, Any]) -> str:
    samples = [series["value"]] if "value" in series else series["values"]
    return f"{series['metric']} {samples[:3]}{' ...' if len(samples) > 3 else ''}"


async def missing_data(
    prometheus: PrometheusApi, dashboard: dict[str, Any], values: Mapping[str, str], start: float
) -> list[str]:
    """The panels' targets that return no series with a finite value yet over the time range from `start` to
    now, each with what it returned."""
    end = time.time()
    missing = []
    for target in panel_targets(dashboard, values, end - start):
        if target.over_range:
            result = await prometheus.range(target.promql, start, end)
        else:
            result = await prometheus.instant(target.promql)
        if not finite_series(result):
            shown = "no series" if not result else f"{len(result)} series, none finite, e.g. {_abridged(result[0])}"
            missing.append(f"{target} -> {shown}")
    return missing


async def wait_for(what: str, timeout_s: float, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` each second until it returns True; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
        await asyncio.sleep(1.0)


@pytest.mark.slow
@needs_prometheus
async def test_every_panel_query_returns_data_after_traffic_with_a_cold_start(tmp_path: Path) -> None:
    dashboard = chartgen.dashboard()
    # The dashboard's time range starts here, before the stack's Prometheus holds any sample: a rate over
    # $__range then has the activator's scrapes from before the cold start, as a range of "last 30 minutes" would.
    shown_from = time.time()
    up = await KapaUp.start(tmp_path, hello_services(ANNOTATIONS), CONFIG)
    try:
        # The banner's explain lines come after the lines KapaUp.start waits for.
        await up.wait_for(lambda: any(_EXPLAIN.search(line) for line in up.output), 10, "the scaler's address")
        (scaler_address,) = {m.group(1) for line in up.output if (m := _EXPLAIN.search(line))}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            prometheus = PrometheusApi(session, up.prometheus_url)
            service = f'{contract.LABEL_NAMESPACE}="{NAMESPACE}", {contract.LABEL_SERVICE}="{SERVICE}"'

            await up.wait_fresh(1)
            await up.wait_replicas(0, ZERO_TIMEOUT_S)

            # The stack's Prometheus scrapes the scaler's own /metrics and the activator's, and has done so
            # once before the traffic: the rates of the activator's cold-start histogram need that baseline.
            async def scraped() -> bool:
                scaler = await prometheus.instant(f"{contract.SCALER_DESIRED_PODS}{{{service}}}")
                activator = await prometheus.instant(f"{contract.ACTIVATOR_COLD_START_WAIT}_count{{{service}}}")
                return bool(scaler and activator)

            await wait_for("first scrape of the scaler and the activator", FIRST_SCRAPE_TIMEOUT_S, scraped)
            (scaler_series,) = await prometheus.instant(f"{contract.SCALER_DESIRED_PODS}{{{service}}}")
            assert scaler_series["metric"]["job"] == contract.SCRAPE_JOB_SCALER, scaler_series
            assert scaler_series["metric"]["instance"] == scaler_address, scaler_series
            (activator_series,) = await prometheus.instant(f"{contract.ACTIVATOR_HELD_REQUESTS}{{{service}}}")
            assert activator_series["metric"]["job"] == contract.SCRAPE_JOB_METRICS, activator_series
            assert up.latest is not None and (up.latest.desired, up.latest.ready) == (0, 0), up.transcript()

            result = await up.load(concurrency=LOAD_CONCURRENCY, duration_s=LOAD_S)
            assert result.errors == 0 and set(result.status_counts) == {200}, result.summary()
            loaded = time.monotonic()

            values = await variable_values(prometheus, dashboard)
            targets = panel_targets(dashboard, values, time.time() - shown_from)
            assert {t.panel for t in targets} == {p["title"] for p in query_panels(dashboard)}
            assert any(t.instant for t in targets) and any(t.over_range for t in targets)
            last: list[str] = []

            async def all_have_data() -> bool:
                last[:] = await missing_data(prometheus, dashboard, values, shown_from)
                return not last

            try:
                await wait_for("data for every panel", DATA_TIMEOUT_S, all_have_data)
            except AssertionError:
                raise AssertionError("panels without data:\n" + "\n".join(last)) from None
            (waits,) = await prometheus.instant(f"{contract.ACTIVATOR_COLD_START_WAIT}_count{{{service}}}")
            assert float(waits["value"][1]) >= 1, f"no request waited for a cold start: {waits}"
            print(f"figures: {len(targets)} panel queries have data {time.monotonic() - loaded:.1f}s after a "
                  f"{LOAD_S:.0f}s load of {result.responses} responses; {waits['value'][1]} cold-start waits, "
                  f"slowest response {result.latencies_s[-1] * 1000:.0f} ms; replicas reached "
                  f"{max(s.ready for s in up.samples)}")
    finally:
        await up.stop()
