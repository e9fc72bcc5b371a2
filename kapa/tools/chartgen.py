"""Files of the Helm chart that are generated from Kapa's own code, so the chart cannot drift from it.

- charts/kapa/files/envoy-bootstrap.json: the bootstrap `kapa gateway --write-bootstrap` writes
  (gateway.bootstrap), with the xDS host left as a placeholder the chart fills in, plus a health listener:
  Envoy's admin stays on loopback, and kubelet reaches its /ready through this listener.
- charts/kapa/dashboards/kapa.json: the Grafana dashboard, built by kapa.tools.dashboard with Grafana's
  Foundation SDK, its PromQL from kapa.core.contract's names.
- charts/kapa/files/scrape-configs.json and files/pod-metrics-endpoints.json: Kapa's two Prometheus jobs
  (kapa.local.prometheus.scrape_configs, the ones the local mode runs) over Kubernetes pod discovery, and
  the same two as PodMonitor endpoints, so a cluster scrapes exactly as `kapa up` does.
- charts/kapa/files/alert-rules.yaml: Kapa's Prometheus alerting rules over kapa.core.contract's names, with
  placeholders where the chart's values go (ALERT_PLACEHOLDERS); the PrometheusRule and the rules ConfigMap
  both carry this one file.

Regenerate them all with `make chart` (`python -m kapa.tools.chartgen --repo DIR`); tests/charts checks the committed files are current.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kapa.core import contract
from kapa.tools.dashboard import dashboard

#: The chart inside a Kapa checkout; the generated files' paths below are relative to the checkout, since this
#: is a developer command over the repository (an installed Kapa has no chart to write into).
CHART_DIR: Path = Path("charts") / "kapa"
BOOTSTRAP_FILE: Path = CHART_DIR / "files" / "envoy-bootstrap.json"
DASHBOARD_FILE: Path = CHART_DIR / "dashboards" / "kapa.json"
SCRAPE_CONFIGS_FILE: Path = CHART_DIR / "files" / "scrape-configs.json"
POD_METRICS_ENDPOINTS_FILE: Path = CHART_DIR / "files" / "pod-metrics-endpoints.json"
ALERT_RULES_FILE: Path = CHART_DIR / "files" / "alert-rules.yaml"
#: The chart's template replaces this with the xDS Service's DNS name (the gateway runs in the scaler's pods).
XDS_HOST_PLACEHOLDER: str = "__XDS_HOST__"
#: Envoy's health listener: proxies GET /ready to the loopback-only admin interface.
ENVOY_HEALTH_PORT: int = 9902
_ADMIN_CLUSTER = "kapa_envoy_admin"


def envoy_bootstrap() -> dict[str, Any]:
    """The gateway's bootstrap for an in-cluster Envoy, plus the health listener and its admin cluster."""
    from gateway.bootstrap import BootstrapConfig, bootstrap_json

    config = BootstrapConfig(
        xds_host=XDS_HOST_PLACEHOLDER, xds_port=contract.XDS_PORT, admin_port=contract.ENVOY_ADMIN_PORT
    )
    document: dict[str, Any] = json.loads(bootstrap_json(config))
    static = document.setdefault("static_resources", {})
    static.setdefault("clusters", []).append(
        {
            "name": _ADMIN_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": _ADMIN_CLUSTER,
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": _socket("127.0.0.1", contract.ENVOY_ADMIN_PORT)}}]}
                ],
            },
        }
    )
    route = {"match": {"path": "/ready"}, "route": {"cluster": _ADMIN_CLUSTER}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "kapa_health",
        "route_config": {"virtual_hosts": [{"name": "health", "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    static.setdefault("listeners", []).append(
        {
            "name": "kapa_health",
            "address": _socket("0.0.0.0", ENVOY_HEALTH_PORT),
            "filter_chains": [
                {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
            ],
        }
    )
    return document


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


# --- Prometheus scraping ----------------------------------------------------------------------------------

#: The labels the chart's scrape jobs (and a PodMonitor, by itself) give every series: the pod's namespace and name.
SCRAPE_LABEL_NAMESPACE: str = "namespace"
SCRAPE_LABEL_POD: str = "pod"


def _pod_discovery() -> dict[str, Any]:
    """Pod discovery for a cluster: keep only the metrics port of queue-proxy sidecars and activators (both
    name it kapa.kube.inject.METRICS_PORT_NAME), skip pods that are not running, label series with their pod."""
    from kapa.kube.inject import METRICS_PORT_NAME, QUEUE_PROXY_CONTAINER

    return {
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_container_name", "__meta_kubernetes_pod_container_port_name"],
                "regex": f"({QUEUE_PROXY_CONTAINER}|{contract.COMPONENT_ACTIVATOR});{METRICS_PORT_NAME}",
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed", "action": "drop"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": SCRAPE_LABEL_NAMESPACE},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": SCRAPE_LABEL_POD},
        ],
    }


#: The chart's job for the scaler's own metrics (kapa_scaler_*, which the dashboard reads).
SCALER_SCRAPE_JOB: str = contract.SCRAPE_JOB_SCALER


def scrape_jobs() -> list[dict[str, Any]]:
    """Kapa's two scrape jobs (1 s scaling counters, 15 s everything else) over Kubernetes pod discovery, and
    a 15 s job for the scaler's own metrics on its `http` port (found by the chart's pod labels)."""
    from kapa.local.prometheus import scaler_scrape_config, scrape_configs

    scaler_discovery = {
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {
                "source_labels": [
                    "__meta_kubernetes_pod_label_app_kubernetes_io_name",
                    "__meta_kubernetes_pod_label_app_kubernetes_io_component",
                    "__meta_kubernetes_pod_container_port_name",
                ],
                "regex": "kapa;scaler;http",
                "action": "keep",
            },
            *_pod_discovery()["relabel_configs"][1:],
        ],
    }
    return [*scrape_configs(_pod_discovery()), scaler_scrape_config(scaler_discovery)]


_CAMEL = {"source_labels": "sourceLabels", "target_label": "targetLabel"}


def pod_metrics_endpoints() -> list[dict[str, Any]]:
    """The same two jobs as prometheus-operator PodMonitor endpoints on the metrics port (discovery and the
    keep rule are the PodMonitor's selector; the job label is set to the job's name)."""
    from kapa.kube.inject import METRICS_PORT_NAME

    endpoints = []
    for job in scrape_jobs():
        if job["job_name"] == SCALER_SCRAPE_JOB:
            continue  # the scaler's PodMonitor is its own (templates/monitoring.yaml)
        endpoint: dict[str, Any] = {
            "port": METRICS_PORT_NAME,
            "path": job["metrics_path"],
            "interval": job["scrape_interval"],
            "scrapeTimeout": job["scrape_timeout"],
            "relabelings": [{"targetLabel": "job", "replacement": job["job_name"]}],
        }
        if job.get("metric_relabel_configs"):
            endpoint["metricRelabelings"] = [
                {_CAMEL.get(key, key): value for key, value in rule.items()} for rule in job["metric_relabel_configs"]
            ]
        endpoints.append(endpoint)
    return endpoints


# --- Prometheus alerting rules ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertSettings:
    """What the chart's values tune in the alerting rules (`prometheus.alerts.*`), as the text that goes in.

    Only what depends on the cluster and its apps is a value; every other threshold and duration is a
    constant below, with its reasoning in the chart's README.
    """

    #: Each alert's runbook_url is this, '#' and the alert's name in lower case (its section in the README).
    runbook_base_url: str
    #: KapaReplicasNotFollowingDecision's `for` (a Prometheus duration): longer than a pod takes to start.
    replicas_not_following_for: str
    #: KapaColdStartsSlow's threshold: the p99 cold-start wait at the activator, in seconds.
    cold_start_wait_p99_seconds: str


#: What files/alert-rules.yaml holds in place of each setting; templates/alerts.yaml puts the values there.
ALERT_PLACEHOLDERS: AlertSettings = AlertSettings(
    runbook_base_url="__RUNBOOK_BASE_URL__",
    replicas_not_following_for="__REPLICAS_NOT_FOLLOWING_FOR__",
    cold_start_wait_p99_seconds="__COLD_START_WAIT_P99_SECONDS__",
)
#: The scaler has not read Prometheus, or has found no series for a service, for this long: more than a
#: Prometheus restart (WAL replay included) or a new pod's first scrapes take, less than a traffic peak lasts.
_STALE_FOR = "5m"
#: Every count the scaler asked for within this window counts as followed, so a decision that moves by a pod
#: every few ticks (a noisy stable window), with the ready pods seconds behind, is never "not following".
_DECISION_WINDOW = "5m"
#: The load needs more pods than max-scale allows for this long: a lasting shortfall, not the peak that
#: max-scale was set to cut off.
_PINNED_FOR = "15m"
#: Kapa's own 503s and 504s above this share of a service's requests at one component, per _REJECTED_WINDOW,
#: for _REJECTED_FOR: 1 in 20 failing for minutes is an incident whatever the service's SLO, while a burst
#: shorter than the `for` (a pod killed, a rollout) is not.
_REJECTED_SHARE = 0.05
_REJECTED_WINDOW = "1m"
_REJECTED_FOR = "5m"
#: Refusals that are Kapa's own 503 (queue full) and 504 (timeout); a bad request is the client's, and an
#: upstream error (502) the app's.
_REJECTED_REASONS = (contract.REASON_QUEUE_FULL, contract.REASON_TIMEOUT)
#: Cold starts are rare (a service at zero), so the p99 is taken over a window long enough to hold some, and
#: one slow cold start keeps it up for that window: longer than the `for`, so it is reported.
_COLD_START_WINDOW = "10m"
_COLD_START_FOR = "5m"
_COLD_START_QUANTILE = 0.99
_CRITICAL = "critical"
_WARNING = "warning"
#: Alerts fire per service: the series of its pods (and of every scaler replica) aggregated by these labels.
_BY_SERVICE = f"{contract.LABEL_NAMESPACE}, {contract.LABEL_SERVICE}"


def _quantile(q: float, histogram: str, selector: str, window: str) -> str:
    """The q-quantile of a histogram per service, over `window`."""
    return f"histogram_quantile({q}, sum by (le, {_BY_SERVICE}) (rate({histogram}_bucket{{{selector}}}[{window}])))"


def _label_text(label: str) -> str:
    """An alert's label, in an annotation (a Prometheus template)."""
    return "{{ $labels." + label + " }}"


_SERVICE_TEXT = f"{_label_text(contract.LABEL_NAMESPACE)}/{_label_text(contract.LABEL_SERVICE)}"
_SCALER_POD_TEXT = f"{_label_text(SCRAPE_LABEL_NAMESPACE)}/{_label_text(SCRAPE_LABEL_POD)}"


class _Quoted(str):
    """A string written double-quoted, so a value the chart puts in its placeholder stays one YAML scalar."""


class _RulesDumper(yaml.SafeDumper):
    """Writes multi-line PromQL as block literals, and _Quoted strings double-quoted."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if isinstance(value, _Quoted) else "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_RulesDumper.add_representer(str, _represent_str)
_RulesDumper.add_representer(_Quoted, _represent_str)


def _alert(
    settings: AlertSettings, name: str, expr: str, duration: str, severity: str, summary: str, description: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": _Quoted(f"{settings.runbook_base_url}#{name.lower()}"),
        },
    }


def _per_service(aggregation: str, expr: str) -> str:
    """`expr` aggregated to one series per service: over its pods, and over scaler replicas (which decide alike)."""
    return f"{aggregation} by ({_BY_SERVICE}) ({expr})"


def _scaler_rules(settings: AlertSettings) -> list[dict[str, Any]]:
    desired, ready = contract.SCALER_DESIRED_PODS, contract.SCALER_READY_PODS
    return [
        _alert(
            settings,
            "KapaScalerMetricsSourceStale",
            f"max by ({SCRAPE_LABEL_NAMESPACE}, {SCRAPE_LABEL_POD}) ({contract.SCALER_METRICS_SOURCE_STALE}) == 1",
            _STALE_FOR,
            _CRITICAL,
            f"Kapa scaler {_label_text(SCRAPE_LABEL_POD)} cannot read Prometheus: autoscaling is frozen",
            f"Scaler pod {_SCALER_POD_TEXT} has not been able to query its metrics source "
            f"(the chart's prometheus.url) for {_STALE_FOR}. Every service keeps its last decision: nothing scales "
            "up under load or down to zero (a request held at zero still wakes its service).",
        ),
        _alert(
            settings,
            "KapaServiceMetricsStale",
            f"{_per_service('max', contract.SCALER_STALE)} == 1\n"
            f"unless on () max({contract.SCALER_METRICS_SOURCE_STALE}) == 1",
            _STALE_FOR,
            _WARNING,
            f"Kapa holds the decision of {_SERVICE_TEXT}: no fresh metrics for it",
            f"Prometheus answers, but for {_STALE_FOR} the scaler has found no series of {_SERVICE_TEXT} while it "
            "has ready pods, and holds its last decision: its queue-proxies are not scraped every second.",
        ),
        _alert(
            settings,
            "KapaReplicasNotFollowingDecision",
            f"{_per_service('max', ready)}\n"
            f"  < {_per_service('min', f'min_over_time({desired}[{_DECISION_WINDOW}])')}\n"
            "or\n"
            f"{_per_service('min', ready)}\n"
            f"  > {_per_service('max', f'max_over_time({desired}[{_DECISION_WINDOW}])')}",
            settings.replicas_not_following_for,
            _WARNING,
            f"{_SERVICE_TEXT} does not get the pod count Kapa decides",
            f"{_SERVICE_TEXT} has {{{{ $value }}}} ready pods, and for {settings.replicas_not_following_for} that "
            f"has been fewer or more than every count the scaler asked for in the {_DECISION_WINDOW} before: what "
            "carries the decision to the pods (KEDA, the HPA, the Deployment, scheduling, image pulls, readiness) "
            "is not acting on it.",
        ),
        _alert(
            settings,
            "KapaServicePinnedAtMaxScale",
            f"{_per_service('max', f'{contract.SCALER_OBSERVED_STABLE} / {contract.SCALER_TARGET}')}\n"
            f"  > {_per_service('max', desired)}\n"
            f"unless {_per_service('max', contract.SCALER_STALE)} == 1",
            _PINNED_FOR,
            _WARNING,
            f"{_SERVICE_TEXT} is held at max-scale while its load needs more pods",
            f"For {_PINNED_FOR} the stable-window load of {_SERVICE_TEXT} has needed "
            "{{ $value | printf \"%.1f\" }} pods at its per-pod target, more than the scaler may ask for: its "
            "pods run above their target and requests queue.",
        ),
    ]


def _rejected(settings: AlertSettings, name: str, component: str, responses: str) -> dict[str, Any]:
    """Kapa's own 503s and 504s at one component, as a share of the requests it answered per service."""
    reasons = "|".join(_REJECTED_REASONS)
    at = f'{contract.LABEL_COMPONENT}="{component}"'
    rejected = f'{contract.REJECTED_REQUESTS}{{{at}, {contract.LABEL_REASON}=~"{reasons}"}}'
    return _alert(
        settings,
        name,
        f"{_per_service('sum', f'rate({rejected}[{_REJECTED_WINDOW}])')}\n"
        "/\n"
        f"{_per_service('sum', f'rate({contract.REQUESTS}{{{at}}}[{_REJECTED_WINDOW}])')}\n"
        f"> {_REJECTED_SHARE:g}",
        _REJECTED_FOR,
        _CRITICAL,
        f"Kapa's {component} rejects {{{{ $value | humanizePercentage }}}} of the requests to {_SERVICE_TEXT}",
        f"For {_REJECTED_FOR}, more than {_REJECTED_SHARE:.0%} of the requests to {_SERVICE_TEXT} (now "
        f"{{{{ $value | humanizePercentage }}}}) have been answered by the {component} itself with {responses}.",
    )


def _request_rules(settings: AlertSettings) -> list[dict[str, Any]]:
    threshold = settings.cold_start_wait_p99_seconds
    activator = f'{contract.LABEL_COMPONENT}="{contract.COMPONENT_ACTIVATOR}"'
    return [
        _rejected(
            settings,
            "KapaQueueProxyRejectingRequests",
            contract.COMPONENT_QUEUE_PROXY,
            "503 (its queue was full: every containerConcurrency slot busy and the queue behind them too) or 504 "
            "(the app gave no response within the revision timeout)",
        ),
        _rejected(
            settings,
            "KapaActivatorRejectingRequests",
            contract.COMPONENT_ACTIVATOR,
            "503 (too many requests already held for the service) or 504 (no pod took the request within the "
            "service's timeout)",
        ),
        _alert(
            settings,
            "KapaColdStartsSlow",
            f"{_quantile(_COLD_START_QUANTILE, contract.ACTIVATOR_COLD_START_WAIT, activator, _COLD_START_WINDOW)}\n"
            f"> {threshold}",
            _COLD_START_FOR,
            _WARNING,
            f"Cold starts of {_SERVICE_TEXT} are slow: p99 wait {{{{ $value | humanizeDuration }}}}",
            f"Over the last {_COLD_START_WINDOW}, more than {1 - _COLD_START_QUANTILE:.0%} of the requests that "
            f"found {_SERVICE_TEXT} without a ready pod waited longer than {threshold}s at the activator for one "
            "(p99 {{ $value | humanizeDuration }}).",
        ),
    ]


def alert_rule_groups(settings: AlertSettings) -> list[dict[str, Any]]:
    """Kapa's alert groups, the scaler's and the request path's, with `settings` written in."""
    return [
        {"name": "kapa-scaler", "rules": _scaler_rules(settings)},
        {"name": "kapa-requests", "rules": _request_rules(settings)},
    ]


def alert_rules_text() -> str:
    """files/alert-rules.yaml: a Prometheus rule file (also a PrometheusRule's spec), with placeholders."""
    header = (
        "# Kapa's alerting rules, generated by `make chart` (kapa/tools/chartgen.py) from kapa.core.contract's names. The chart\n"
        "# fills in each __PLACEHOLDER__ from its prometheus.alerts values; the runbooks are in its README.\n"
    )
    document = {"groups": alert_rule_groups(ALERT_PLACEHOLDERS)}
    return header + yaml.dump(document, Dumper=_RulesDumper, sort_keys=False, width=4096)


def rendered() -> dict[Path, str]:
    """Each generated file's path (relative to the checkout) and its exact text."""
    return {
        BOOTSTRAP_FILE: json.dumps(envoy_bootstrap(), indent=2) + "\n",
        # Sorted keys: a new build of the SDK (which writes keys in its own order) shows as a change of content.
        DASHBOARD_FILE: json.dumps(dashboard(), indent=2, sort_keys=True) + "\n",
        SCRAPE_CONFIGS_FILE: json.dumps(scrape_jobs(), indent=2) + "\n",
        POD_METRICS_ENDPOINTS_FILE: json.dumps(pod_metrics_endpoints(), indent=2) + "\n",
        ALERT_RULES_FILE: alert_rules_text(),
    }


def main(argv: Sequence[str] = ()) -> int:
    """Write the generated files into a checkout (`make chart`, or `python -m kapa.tools.chartgen --repo DIR`)."""
    parser = argparse.ArgumentParser(
        prog="python -m kapa.tools.chartgen",
        description="Regenerate the Helm chart's generated files from Kapa's code, in a Kapa checkout.",
    )
    parser.add_argument("--repo", type=Path, default=Path.cwd(),
                        help="the checkout whose charts/kapa to write (default: the current directory)")  # fmt: skip
    args = parser.parse_args(argv)
    if not (args.repo / CHART_DIR / "Chart.yaml").is_file():
        parser.error(f"{args.repo.resolve()} is not a Kapa checkout (no {CHART_DIR / 'Chart.yaml'}): run it from "
                     "the repository's root or pass --repo")  # fmt: skip
    for path, text in rendered().items():
        target = args.repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
