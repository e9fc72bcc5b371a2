"""Kapa's alerting rules, as the chart ships them.

promtool checks the rule file exactly as the chart renders it and runs each group's unit tests on it
(alert_rules_<group>_test.yaml here: series that fire each alert, and series just short of it that must not).
The chart carries the generated file's groups as a PrometheusRule only where the operator's API is served,
as a ConfigMap otherwise, with its values in every placeholder; every alert has its runbook in the README.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest
import yaml

from kapa.tools import chartgen
from kapa.core import contract
from tests.charts.conftest import CHART, REPO, find, one, render
from tests.charts.test_dashboard import HISTOGRAM_SUFFIXES, contract_metric_names

HERE = Path(__file__).resolve().parent
OPERATOR_API = ("--api-versions", "monitoring.coreos.com/v1")
RULES_CONFIGMAP = "kapa-alert-rules"
PROMETHEUS_RULE = "kapa-alerts"
#: The rule file's name in the ConfigMap, and the name the unit tests' rule_files give it.
RULES_FILE = "alert-rules.yaml"
GROUPS = [group["name"] for group in chartgen.alert_rule_groups(chartgen.ALERT_PLACEHOLDERS)]
#: Labels the unit tests' series may carry: the exporters' (kapa.core.contract) and the scrape's.
SERIES_LABELS = {
    contract.LABEL_NAMESPACE, contract.LABEL_SERVICE, contract.LABEL_COMPONENT, contract.LABEL_CODE_CLASS,
    contract.LABEL_REASON, chartgen.SCRAPE_LABEL_NAMESPACE, chartgen.SCRAPE_LABEL_POD, "job", "le",
}


def rule_test_file(group: str) -> Path:
    return HERE / f"alert_rules_{group.replace('-', '_')}_test.yaml"


def settings_of(values: dict[str, Any]) -> chartgen.AlertSettings:
    """The settings `prometheus.alerts` values give, as the chart's template writes them (`toString`)."""
    return chartgen.AlertSettings(
        runbook_base_url=values["runbookBaseUrl"],
        replicas_not_following_for=values["replicasNotFollowingFor"],
        cold_start_wait_p99_seconds=str(values["coldStartWaitP99Seconds"]),
    )


DEFAULT_SETTINGS = settings_of(yaml.safe_load((CHART / "values.yaml").read_text())["prometheus"]["alerts"])


def generated_groups(settings: chartgen.AlertSettings) -> list[dict[str, Any]]:
    """files/alert-rules.yaml, read as it is committed, with each placeholder replaced by its setting."""
    text = (REPO / chartgen.ALERT_RULES_FILE).read_text()
    for placeholder, value in zip(astuple(chartgen.ALERT_PLACEHOLDERS), astuple(settings)):
        text = text.replace(placeholder, value)
    return yaml.safe_load(text)["groups"]


def rendered_rule_file(helm: str, directory: Path, *args: str) -> Path:
    """The rule file of the chart's ConfigMap, written to `directory` under the name the unit tests read."""
    path = directory / RULES_FILE
    path.write_text(one(render(helm, *args), "ConfigMap", RULES_CONFIGMAP)["data"][RULES_FILE])
    return path


def promtool_test(promtool: str, rules: Path, group: str) -> subprocess.CompletedProcess[str]:
    test_file = shutil.copy(rule_test_file(group), rules.parent)
    return subprocess.run(
        [promtool, "test", "rules", test_file], cwd=rules.parent, capture_output=True, text=True, timeout=60
    )


def test_promtool_accepts_the_rendered_rules(helm: str, promtool: str, tmp_path: Path) -> None:
    rules = rendered_rule_file(helm, tmp_path)
    check = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = sum(len(group["rules"]) for group in generated_groups(DEFAULT_SETTINGS))
    assert f"SUCCESS: {alerts} rules found" in check.stdout


@pytest.mark.parametrize("group", GROUPS)
def test_each_alert_group_passes_its_promtool_unit_tests(helm: str, promtool: str, tmp_path: Path, group: str) -> None:
    result = promtool_test(promtool, rendered_rule_file(helm, tmp_path), group)
    assert result.returncode == 0, result.stdout + result.stderr


#: Values that move a threshold or a `for` past a case of the unit tests, which must then fail: the cases sit
#: just either side of the defaults.
MOVED = [
    ("prometheus.alerts.coldStartWaitP99Seconds=9", "kapa-requests"),  # web's 9.95 s p99 fires
    ("prometheus.alerts.coldStartWaitP99Seconds=30", "kapa-requests"),  # cart's 29.8 s p99 does not
    ("prometheus.alerts.replicasNotFollowingFor=8m", "kapa-scaler"),  # cart and web fire before 15m
    ("prometheus.alerts.replicasNotFollowingFor=12m", "kapa-scaler"),  # ... or not yet at 17m
]


@pytest.mark.parametrize(("value", "group"), MOVED, ids=[value for value, _ in MOVED])
def test_unit_tests_fail_when_a_threshold_moves(helm: str, promtool: str, tmp_path: Path, value: str, group: str) -> None:
    result = promtool_test(promtool, rendered_rule_file(helm, tmp_path, "--set", value), group)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("group", GROUPS)
def test_every_alert_has_cases_that_fire_it_and_cases_that_must_not(group: str) -> None:
    tests = yaml.safe_load(rule_test_file(group).read_text())
    assert tests["rule_files"] == [RULES_FILE]
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    (rules,) = [g["rules"] for g in generated_groups(DEFAULT_SETTINGS) if g["name"] == group]
    for alert in [rule["alert"] for rule in rules]:
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == alert]
        assert any(expected), f"no case fires {alert}"
        assert not all(expected), f"no case where {alert} must not fire"


@pytest.mark.parametrize("group", GROUPS)
def test_unit_test_series_are_the_ones_kapa_exports(group: str) -> None:
    known = contract_metric_names()
    tests = yaml.safe_load(rule_test_file(group).read_text())
    for series in [s["series"] for test in tests["tests"] for s in test["input_series"]]:
        match = re.fullmatch(r"(\w+)\{(.*)\}", series)
        assert match, series
        name, labels = match.groups()
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
        assert base in known, f"{name} is not a kapa.core.contract metric"
        assert {label.split("=")[0].strip() for label in labels.split(",")} <= SERIES_LABELS, series


def test_prometheus_rule_only_with_the_operator_api_and_the_configmap_otherwise(helm: str) -> None:
    without, operator = render(helm), render(helm, *OPERATOR_API, "--set", "prometheus.alerts.labels.release=prom")
    assert not find(without, "PrometheusRule")
    assert not find(operator, "ConfigMap", RULES_CONFIGMAP)
    expected = generated_groups(DEFAULT_SETTINGS)
    rule = one(operator, "PrometheusRule", PROMETHEUS_RULE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == {"groups": expected}
    configmap = one(without, "ConfigMap", RULES_CONFIGMAP)
    assert yaml.safe_load(configmap["data"][RULES_FILE]) == {"groups": expected}


def test_every_placeholder_takes_its_value(helm: str) -> None:
    values = {"runbookBaseUrl": "https://wiki.example/kapa/runbooks", "replicasNotFollowingFor": "20m",
              "coldStartWaitP99Seconds": 45}
    args = ("--set", ",".join(f"prometheus.alerts.{key}={value}" for key, value in values.items()))
    text = one(render(helm, *args), "ConfigMap", RULES_CONFIGMAP)["data"][RULES_FILE]
    assert all(placeholder not in text for placeholder in astuple(chartgen.ALERT_PLACEHOLDERS))
    assert yaml.safe_load(text)["groups"] == generated_groups(settings_of(values))


def test_alerts_can_be_left_out(helm: str) -> None:
    for args in [(), OPERATOR_API]:
        manifests = render(helm, *args, "--set", "prometheus.alerts.enabled=false")
        assert not find(manifests, "PrometheusRule") and not find(manifests, "ConfigMap", RULES_CONFIGMAP)


def test_every_alert_has_a_runbook_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()
    headings = set(re.findall(r"^### (\w+)$", readme, flags=re.MULTILINE))
    for group in generated_groups(DEFAULT_SETTINGS):
        for rule in group["rules"]:
            assert rule["alert"] in headings, f"charts/kapa/README.md has no section '### {rule['alert']}'"
            # GitHub's anchor for that heading: the alert's name in lower case.
            assert rule["annotations"]["runbook_url"] == f"{DEFAULT_SETTINGS.runbook_base_url}#{rule['alert'].lower()}"
