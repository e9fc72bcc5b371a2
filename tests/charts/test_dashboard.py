"""The Grafana dashboard as committed: every metric its PromQL names is one kapa.core.contract defines, each topic
an operator asks about has a panel of the right kind, the layout holds, and the file decodes into the models of
Grafana's Foundation SDK without losing a field.

The helpers here (which panels query, Grafana's variables filled in) are shared with test_dashboard_promql.py
(every query parses in a real Prometheus) and test_dashboard_live.py (every query has data after real traffic).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from kapa.core import contract
from kapa.tools import chartgen
from tests.charts.conftest import REPO

DASHBOARD = json.loads((REPO / chartgen.DASHBOARD_FILE).read_text())
#: Series suffixes Prometheus adds to histograms (and counters' exposition), which contract names lack.
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
#: Identifiers in PromQL that are functions, keywords or label names, not metrics.
NOT_METRICS = {"sum", "by", "rate", "histogram_quantile", "le", "label_values"}
#: Grafana's variable syntaxes: $name, ${name} or ${name:format}, and the deprecated [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


# --- shared helpers ------------------------------------------------------------------------------------


def query_panels(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries, in order: rows are only headings, and a collapsed row keeps its panels
    inside it."""
    panels: list[dict[str, Any]] = []
    for panel in document["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def query_variables(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [v for v in document["templating"]["list"] if v["type"] == "query"]


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with every Grafana variable replaced by its value; an unknown variable is an error naming it."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"Grafana variable ${name} has no value in this test (in {text!r})")
        return values[name]

    return _VARIABLE.sub(value, text)


def interval_variables(step_s: int, range_s: float, scrape_interval_s: int) -> dict[str, str]:
    """Grafana's built-in interval variables for a query with step `step_s` over a time range of `range_s`
    seconds. $__rate_interval is Grafana's max($__interval + scrape interval, 4 x scrape interval)."""
    rate_interval_s = max(step_s + scrape_interval_s, 4 * scrape_interval_s)
    return {
        "__interval": f"{step_s}s",
        "__interval_ms": str(step_s * 1000),
        "__rate_interval": f"{rate_interval_s}s",
        "__range": f"{math.ceil(range_s)}s",
        "__range_s": str(math.ceil(range_s)),
        "__range_ms": str(math.ceil(range_s * 1000)),
    }


def test_substitute_fills_every_syntax_and_names_an_unknown_variable() -> None:
    values = {"namespace": "default", "__rate_interval": "60s"}
    assert substitute('rate(x{a=~"$namespace", b="${namespace:regex}", c="[[namespace]]"}[$__rate_interval])',
                      values) == 'rate(x{a=~"default", b="default", c="default"}[60s])'  # fmt: skip
    with pytest.raises(KeyError, match=r"\$service"):
        substitute('x{a=~"$service"}', values)


def test_query_panels_skip_rows_and_open_collapsed_ones() -> None:
    document = {
        "panels": [
            {"type": "row", "panels": []},
            {"type": "stat", "title": "a"},
            {"type": "row", "collapsed": True, "panels": [{"type": "timeseries", "title": "b"}]},
        ]
    }
    assert [p["title"] for p in query_panels(document)] == ["a", "b"]


# --- the metrics it names --------------------------------------------------------------------------------


def contract_metric_names() -> set[str]:
    return {value for name, value in vars(contract).items() if name.isupper() and isinstance(value, str) and value.startswith("kapa_")}


def metrics_in(expr: str) -> set[str]:
    """Names used as metrics: identifiers directly followed by a selector `{` or range `[`."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", without_strings)) - NOT_METRICS


def all_exprs() -> list[str]:
    exprs = [target["expr"] for panel in query_panels(DASHBOARD) for target in panel["targets"]]
    exprs += [v["query"]["query"] for v in query_variables(DASHBOARD)]
    return exprs


def test_every_metric_in_the_dashboard_is_defined_in_the_contract() -> None:
    known = contract_metric_names()
    used = set()
    for expr in all_exprs():
        names = metrics_in(expr) | set(re.findall(r"label_values\((\w+)", expr))
        assert names, f"no metric found in {expr!r}"
        for name in names:
            base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            assert base in known, f"{name} (in {expr!r}) is not a kapa.core.contract metric"
            used.add(base)
    assert {
        contract.SCALER_DESIRED_PODS,
        contract.SCALER_READY_PODS,
        contract.SCALER_PANIC_MODE,
        contract.SCALER_TICK_DURATION,
        contract.REQUEST_DURATION,
        contract.ACTIVATOR_HELD_REQUESTS,
        contract.ACTIVATOR_COLD_START_WAIT,
    } <= used


def test_metric_extraction_finds_names_and_ignores_labels_and_strings() -> None:
    expr = 'sum by (le) (rate(kapa_x_bucket{code_class="2xx", a=~"kapa_y{"}[1m])) + other_metric'
    assert metrics_in(expr) == {"kapa_x_bucket"}


# --- what it shows ---------------------------------------------------------------------------------------


def panel_titled(title: str) -> dict[str, Any]:
    (panel,) = [p for p in query_panels(DASHBOARD) if p["title"] == title]
    return panel


def exprs_of(panel: Mapping[str, Any]) -> str:
    return " ".join(target["expr"] for target in panel["targets"])


def test_panels_cover_what_operators_ask_for() -> None:
    """Each topic (a word of a panel's title) has a panel whose queries read the metrics it needs."""
    p50, p99 = "histogram_quantile(0.5,", "histogram_quantile(0.99,"
    wait = f"{contract.ACTIVATOR_COLD_START_WAIT}_bucket"
    wanted = {
        "desired vs ready": [contract.SCALER_DESIRED_PODS, contract.SCALER_READY_PODS],
        "desired / ready": [contract.SCALER_DESIRED_PODS, contract.SCALER_READY_PODS],
        "stable": [contract.SCALER_OBSERVED_STABLE, contract.SCALER_OBSERVED_PANIC],
        "panic mode": [contract.SCALER_PANIC_MODE],
        "panic periods": [contract.SCALER_PANIC_MODE],
        "in panic": [contract.SCALER_PANIC_MODE],
        "tick duration": [f"{contract.SCALER_TICK_DURATION}_bucket", p50, p99],
        "request rate": [contract.REQUESTS],
        "latency": [f"{contract.REQUEST_DURATION}_bucket", "histogram_quantile"],
        "held requests": [contract.ACTIVATOR_HELD_REQUESTS],
        "cold-start waits": [wait, p50, p99],
        "cold-start wait p99": [wait, p99],
        "cold-start wait distribution": [wait],
        "rejected": [contract.REJECTED_REQUESTS],
    }
    exprs_by_title = {p["title"]: exprs_of(p) for p in query_panels(DASHBOARD)}
    for topic, needles in wanted.items():
        matching = {title: expr for title, expr in exprs_by_title.items() if topic in title.lower()}
        assert matching, f"no panel about {topic}"
        assert any(all(needle in expr for needle in needles) for expr in matching.values()), (topic, matching)


def test_each_panel_kind_is_set_up_for_what_it_shows() -> None:
    panels = query_panels(DASHBOARD)
    assert {p["type"] for p in panels} == {"timeseries", "stat", "heatmap", "state-timeline"}
    for panel in panels:
        assert [t["refId"] for t in panel["targets"]] == [chr(ord("A") + i) for i in range(len(panel["targets"]))]
        if panel["type"] == "stat":
            # a current value: Grafana asks for the last point only
            assert all(t["instant"] and not t["range"] for t in panel["targets"]), panel["title"]
            assert panel["options"]["reduceOptions"]["calcs"] == ["lastNotNull"]
        if panel["type"] in ("timeseries", "state-timeline"):
            assert panel["options"]["legend"]["showLegend"], f"{panel['title']}: hidden legend"
    distribution = panel_titled("Activator: cold-start wait distribution")
    assert distribution["type"] == "heatmap"
    assert distribution["options"]["calculate"] is False  # Prometheus's buckets, not Grafana's
    assert [t["format"] for t in distribution["targets"]] == ["heatmap"]
    assert "sum by (le)" in exprs_of(distribution)
    periods = panel_titled("Panic periods")
    assert periods["type"] == "state-timeline"
    (mapping,) = periods["fieldConfig"]["defaults"]["mappings"]
    assert {value: result["text"] for value, result in mapping["options"].items()} == {"0": "stable", "1": "panic"}


def test_scaler_decisions_are_counted_once_however_many_scaler_replicas_export_them() -> None:
    """Every scaler replica exports every service's decision: the new panels take the max per service."""
    for title in ("Pods: desired / ready", "Services in panic now", "Panic periods"):
        for target in panel_titled(title)["targets"]:
            assert f"max by ({contract.LABEL_NAMESPACE}, {contract.LABEL_SERVICE})" in target["expr"], (title, target)


def test_the_tick_duration_panel_marks_the_tick_interval() -> None:
    from scaler.decision import TICK_INTERVAL_S

    panel = panel_titled("Scaler tick duration")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in steps] == [None, TICK_INTERVAL_S]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"


# --- how it is laid out and selected --------------------------------------------------------------------


def test_panels_have_unique_ids_a_datasource_variable_and_do_not_overlap() -> None:
    panels = DASHBOARD["panels"]
    assert panels[0]["type"] == "row", "the dashboard opens with a row heading"
    assert all(not p["collapsed"] and p["panels"] == [] for p in panels if p["type"] == "row"), "rows stay open"
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["datasource"]["uid"] == "${datasource}" for p in query_panels(DASHBOARD))
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['title']} overlaps another"
                cells.add((x, y))
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']} is wider than the grid"


def test_variables_select_a_prometheus_then_namespaces_then_their_services() -> None:
    datasource, namespace, service = DASHBOARD["templating"]["list"]
    assert (datasource["type"], datasource["name"], datasource["query"]) == ("datasource", "datasource", "prometheus")
    assert [namespace["name"], service["name"]] == ["namespace", "service"]
    for variable in (namespace, service):
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
        assert variable["refresh"] == 2  # on time range change: services come and go
    assert contract.LABEL_NAMESPACE in namespace["query"]["query"]
    assert '=~"$namespace"' in service["query"]["query"] and contract.LABEL_SERVICE in service["query"]["query"]


# --- what Grafana's own schema makes of it ------------------------------------------------------------


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def schema_losses(document: dict[str, Any]) -> list[str]:
    """The fields of `document` that do not survive a decode into the SDK's models (Grafana's schema for
    the dashboard, its panels and their options) and an encode back: misspelt or unknown ones."""
    register_default_plugins()  # so panel options and Prometheus queries decode into their own types
    decoded = json.loads(JSONEncoder().encode(Dashboard.from_json(document)))
    kept = dict(leaves(decoded))
    return [f"{path} = {value!r}" for path, value in leaves(document) if kept.get(path, object()) != value]


def test_every_field_of_the_dashboard_is_one_grafanas_schema_knows() -> None:
    assert schema_losses(DASHBOARD) == []
    assert DASHBOARD["schemaVersion"] >= 39  # never older than the hand-written dashboard it replaced


def test_the_schema_check_finds_a_misspelt_option() -> None:
    document = json.loads(json.dumps(DASHBOARD))
    panel = next(p for p in document["panels"] if p["type"] == "stat")
    panel["options"]["graphMod"] = "area"
    assert schema_losses(document) == [f"/panels[{document['panels'].index(panel)}]/options/graphMod = 'area'"]
