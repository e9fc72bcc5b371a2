"""The Grafana dashboard: every metric its PromQL names is one kapa.contract defines, and each topic the issue
asks for has a panel.

Still to come (a later session, with the e2e control plane): run every panel's PromQL against a real
Prometheus after real traffic and assert each returns data.
"""

from __future__ import annotations

import json
import re

from kapa import chartgen, contract

DASHBOARD = json.loads(chartgen.DASHBOARD_FILE.read_text())
#: Series suffixes Prometheus adds to histograms (and counters' exposition), which contract names lack.
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
#: Identifiers in PromQL that are functions, keywords or label names, not metrics.
NOT_METRICS = {"sum", "by", "rate", "histogram_quantile", "le", "label_values"}


def contract_metric_names() -> set[str]:
    return {value for name, value in vars(contract).items() if name.isupper() and isinstance(value, str) and value.startswith("kapa_")}


def metrics_in(expr: str) -> set[str]:
    """Names used as metrics: identifiers directly followed by a selector `{` or range `[`."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", without_strings)) - NOT_METRICS


def all_exprs() -> list[str]:
    exprs = [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]
    exprs += [v["query"]["query"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_every_metric_in_the_dashboard_is_defined_in_the_contract() -> None:
    known = contract_metric_names()
    used = set()
    for expr in all_exprs():
        names = metrics_in(expr) | set(re.findall(r"label_values\((\w+)", expr))
        assert names, f"no metric found in {expr!r}"
        for name in names:
            base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            assert base in known, f"{name} (in {expr!r}) is not a kapa.contract metric"
            used.add(base)
    assert {contract.SCALER_DESIRED_PODS, contract.REQUEST_DURATION, contract.ACTIVATOR_COLD_START_WAIT} <= used


def test_metric_extraction_finds_names_and_ignores_labels_and_strings() -> None:
    expr = 'sum by (le) (rate(kapa_x_bucket{code_class="2xx", a=~"kapa_y{"}[1m])) + other_metric'
    assert metrics_in(expr) == {"kapa_x_bucket"}


def test_panels_cover_what_operators_ask_for() -> None:
    exprs_by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in DASHBOARD["panels"]}
    wanted = {
        "desired vs ready": [contract.SCALER_DESIRED_PODS, contract.SCALER_READY_PODS],
        "stable": [contract.SCALER_OBSERVED_STABLE, contract.SCALER_OBSERVED_PANIC],
        "panic mode": [contract.SCALER_PANIC_MODE],
        "request rate": [contract.REQUESTS],
        "latency": [f"{contract.REQUEST_DURATION}_bucket", "histogram_quantile"],
        "held requests": [contract.ACTIVATOR_HELD_REQUESTS],
        "cold-start": [f"{contract.ACTIVATOR_COLD_START_WAIT}_bucket"],
    }
    for topic, needles in wanted.items():
        matching = [expr for title, expr in exprs_by_title.items() if topic in title.lower()]
        assert matching, f"no panel about {topic}"
        assert all(needle in matching[0] for needle in needles), (topic, matching[0])


def test_panels_have_unique_ids_a_datasource_variable_and_do_not_overlap() -> None:
    panels = DASHBOARD["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['title']} overlaps another"
                cells.add((x, y))
        assert grid["x"] + grid["w"] <= 24
