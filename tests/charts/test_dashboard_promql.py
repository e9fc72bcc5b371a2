"""Every PromQL query of the dashboard is accepted by a real Prometheus (the Debian package's binary).

This checks syntax and functions with Prometheus's own parser and evaluator, on an empty server. Still to
come (a later session, with traffic through real queue-proxies, the scaler and the activator): assert that
each panel's queries return data.
"""

from __future__ import annotations

import os
import re

import aiohttp
import pytest

from kapa import chartgen
from kapa.prometheus_server import DEFAULT_BINARY, PrometheusServer

pytestmark = pytest.mark.skipif(
    not os.access(DEFAULT_BINARY, os.X_OK), reason="needs Prometheus: apt-get install prometheus (scripts/setup.sh)"
)


def as_promql(expr: str) -> str:
    """A dashboard expression as Prometheus receives it: Grafana's variables filled in, label_values()
    (a Grafana function) reduced to its series selector."""
    expr = expr.replace("$namespace", ".*").replace("$service", ".*")
    match = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr)
    return match.group(1) if match else expr


def dashboard_queries() -> list[str]:
    dashboard = chartgen.dashboard()
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


async def test_prometheus_accepts_every_dashboard_query() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
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
