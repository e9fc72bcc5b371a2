"""Every PromQL query of the dashboard is accepted by a real Prometheus (the Debian package's binary).

This checks syntax and functions with Prometheus's own parser and evaluator, on an empty server;
test_dashboard_live.py checks that each panel's queries return data after real traffic.
"""

from __future__ import annotations

import os
import re

import aiohttp
import pytest

from kapa.core import contract
from kapa.local.prometheus import DEFAULT_BINARY, PrometheusServer
from kapa.tools import chartgen
from tests.charts.test_dashboard import interval_variables, query_panels, query_variables, substitute

pytestmark = pytest.mark.skipif(
    not os.access(DEFAULT_BINARY, os.X_OK), reason="needs Prometheus: apt-get install prometheus (scripts/setup.sh)"
)

#: What Grafana would fill in for the dashboard's default view: every namespace and service ("All"), its
#: 30 minutes drawn at a 15 s step.
VALUES = {
    "namespace": ".*",
    "service": ".*",
    **interval_variables(step_s=15, range_s=30 * 60, scrape_interval_s=contract.METRICS_SCRAPE_INTERVAL_S),
}


def as_promql(expr: str) -> str:
    """A dashboard expression as Prometheus receives it: Grafana's variables filled in, label_values()
    (a Grafana function) reduced to its series selector."""
    expr = substitute(expr, VALUES)
    match = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr)
    return match.group(1) if match else expr


def dashboard_queries() -> list[str]:
    dashboard = chartgen.dashboard()
    panels = query_panels(dashboard)
    assert all(panel["targets"] for panel in panels), "a panel without a query"
    queries = [target["expr"] for panel in panels for target in panel["targets"]]
    queries += [v["query"]["query"] for v in query_variables(dashboard)]
    return queries


def test_grafana_variables_are_filled_in_before_prometheus_sees_a_query() -> None:
    expr = 'rate(x{a=~"$namespace"}[$__rate_interval]) and rate(x[$__range])'
    assert as_promql(expr) == 'rate(x{a=~".*"}[60s]) and rate(x[1800s])'
    assert as_promql('label_values(x{a=~"$namespace"}, b)') == 'x{a=~".*"}'


async def test_prometheus_accepts_every_dashboard_query() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 26
    async with PrometheusServer() as prometheus, aiohttp.ClientSession() as session:
        for expr in queries:
            async with session.get(f"{prometheus.url}/api/v1/query", params={"query": as_promql(expr)}) as response:
                body = await response.json()
            assert response.status == 200 and body["status"] == "success", (expr, body)


async def test_prometheus_rejects_a_broken_query() -> None:
    """The check above can fail: a malformed query is refused with an error."""
    async with PrometheusServer() as prometheus, aiohttp.ClientSession() as session:
        async with session.get(f"{prometheus.url}/api/v1/query", params={"query": "sum by (le (rate(x[1m]))"}) as response:
            body = await response.json()
    assert response.status == 400 and body["status"] == "error"
