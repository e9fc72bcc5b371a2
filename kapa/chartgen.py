"""Files of the Helm chart that are generated from Kapa's own code, so the chart cannot drift from it.

- charts/kapa/files/envoy-bootstrap.json: the bootstrap `kapa gateway --write-bootstrap` writes
  (gateway.bootstrap), with the xDS host left as a placeholder the chart fills in, plus a health listener:
  Envoy's admin stays on loopback, and kubelet reaches its /ready through this listener.
- charts/kapa/dashboards/kapa.json: the Grafana dashboard, its PromQL built from kapa.contract's names.
- charts/kapa/files/scrape-configs.json and files/pod-metrics-endpoints.json: Kapa's two Prometheus jobs
  (kapa.prometheus_server.scrape_configs, the ones the local mode runs) over Kubernetes pod discovery, and
  the same two as PodMonitor endpoints, so a cluster scrapes exactly as `kapa up` does.

Regenerate both with `python -m kapa.chartgen`; tests/charts checks the committed files are current.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kapa import contract

CHART_DIR: Path = Path(__file__).resolve().parent.parent / "charts" / "kapa"
BOOTSTRAP_FILE: Path = CHART_DIR / "files" / "envoy-bootstrap.json"
DASHBOARD_FILE: Path = CHART_DIR / "dashboards" / "kapa.json"
SCRAPE_CONFIGS_FILE: Path = CHART_DIR / "files" / "scrape-configs.json"
POD_METRICS_ENDPOINTS_FILE: Path = CHART_DIR / "files" / "pod-metrics-endpoints.json"
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

def _pod_discovery() -> dict[str, Any]:
    """Pod discovery for a cluster: keep only the metrics port of queue-proxy sidecars and activators (both
    name it kapa.inject.METRICS_PORT_NAME), skip pods that are not running, label series with their pod."""
    from kapa.inject import METRICS_PORT_NAME, QUEUE_PROXY_CONTAINER

    return {
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_container_name", "__meta_kubernetes_pod_container_port_name"],
                "regex": f"({QUEUE_PROXY_CONTAINER}|{contract.COMPONENT_ACTIVATOR});{METRICS_PORT_NAME}",
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed", "action": "drop"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }


#: The chart's job for the scaler's own metrics (kapa_scaler_*, which the dashboard reads).
SCALER_SCRAPE_JOB: str = contract.SCRAPE_JOB_SCALER


def scrape_jobs() -> list[dict[str, Any]]:
    """Kapa's two scrape jobs (1 s scaling counters, 15 s everything else) over Kubernetes pod discovery, and
    a 15 s job for the scaler's own metrics on its `http` port (found by the chart's pod labels)."""
    from kapa.prometheus_server import scaler_scrape_config, scrape_configs

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
    from kapa.inject import METRICS_PORT_NAME

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


# --- the Grafana dashboard --------------------------------------------------------------------------------

_SELECT = f'{contract.LABEL_NAMESPACE}=~"$namespace", {contract.LABEL_SERVICE}=~"$service"'
_BY_SERVICE = f"{contract.LABEL_NAMESPACE}, {contract.LABEL_SERVICE}"
_LEGEND = "{{" + contract.LABEL_NAMESPACE + "}}/{{" + contract.LABEL_SERVICE + "}}"
_QUEUE_PROXY = f'{contract.LABEL_COMPONENT}="{contract.COMPONENT_QUEUE_PROXY}", {_SELECT}'


def _gauge(metric: str) -> str:
    return f"sum by ({_BY_SERVICE}) ({metric}{{{_SELECT}}})"


def _quantile(q: float, histogram: str, selector: str, window: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {_BY_SERVICE}) (rate({histogram}_bucket{{{selector}}}[{window}])))"


def dashboard_panels() -> list[dict[str, Any]]:
    """The dashboard's panels in reading order, each with its PromQL over kapa.contract names."""
    rows: list[tuple[str, str, str, list[tuple[str, str]]]] = [
        (
            "Desired vs ready replicas",
            "What the scaler asks for after every bound, against the ready pods it saw.",
            "short",
            [
                (f"desired {_LEGEND}", _gauge(contract.SCALER_DESIRED_PODS)),
                (f"ready {_LEGEND}", _gauge(contract.SCALER_READY_PODS)),
            ],
        ),
        (
            "Observed concurrency: stable and panic windows",
            "Total concurrency (or rps) over the stable (60 s) and panic (6 s) windows, and the per-pod target.",
            "short",
            [
                (f"stable {_LEGEND}", _gauge(contract.SCALER_OBSERVED_STABLE)),
                (f"panic {_LEGEND}", _gauge(contract.SCALER_OBSERVED_PANIC)),
                (f"target per pod {_LEGEND}", _gauge(contract.SCALER_TARGET)),
            ],
        ),
        (
            "Panic mode",
            "1 while the service is in panic mode: it scales on the 6 s window and never scales down.",
            "short",
            [(_LEGEND, _gauge(contract.SCALER_PANIC_MODE))],
        ),
        (
            "Request rate by status class",
            "Requests completed at the queue-proxies per second.",
            "reqps",
            [
                (
                    _LEGEND + " {{" + contract.LABEL_CODE_CLASS + "}}",
                    f"sum by ({_BY_SERVICE}, {contract.LABEL_CODE_CLASS}) "
                    f"(rate({contract.REQUESTS}{{{_QUEUE_PROXY}}}[1m]))",
                )
            ],
        ),
        (
            "Latency percentiles",
            "Request duration at the queue-proxies (queueing included).",
            "s",
            [
                (f"p{int(q * 100)} {_LEGEND}", _quantile(q, contract.REQUEST_DURATION, _QUEUE_PROXY, "1m"))
                for q in (0.5, 0.95, 0.99)
            ],
        ),
        (
            "Activator: held requests",
            "Requests the activator holds while a service has no ready pod (or no free slot).",
            "short",
            [(_LEGEND, _gauge(contract.ACTIVATOR_HELD_REQUESTS))],
        ),
        (
            "Activator: cold-start waits",
            "How long requests that arrived at zero waited for a pod, and how many did.",
            "s",
            [
                (f"p50 {_LEGEND}", _quantile(0.5, contract.ACTIVATOR_COLD_START_WAIT, _SELECT, "5m")),
                (f"p99 {_LEGEND}", _quantile(0.99, contract.ACTIVATOR_COLD_START_WAIT, _SELECT, "5m")),
                (
                    f"waits/s {_LEGEND}",
                    f"sum by ({_BY_SERVICE}) (rate({contract.ACTIVATOR_COLD_START_WAIT}_count{{{_SELECT}}}[5m]))",
                ),
            ],
        ),
        (
            "Rejected requests by reason",
            "Requests refused before the app: queue full, timeout, draining, bad request, upstream error.",
            "reqps",
            [
                (
                    _LEGEND + " {{" + contract.LABEL_REASON + "}}",
                    f"sum by ({_BY_SERVICE}, {contract.LABEL_REASON}) "
                    f"(rate({contract.REJECTED_REQUESTS}{{{_SELECT}}}[1m]))",
                )
            ],
        ),
    ]
    panels = []
    for index, (title, description, unit, queries) in enumerate(rows):
        panels.append(
            {
                "id": index + 1,
                "type": "timeseries",
                "title": title,
                "description": description,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"x": (index % 2) * 12, "y": (index // 2) * 8, "w": 12, "h": 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": [
                    {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (legend, expr) in enumerate(queries)
                ],
            }
        )
    return panels


def dashboard() -> dict[str, Any]:
    """The whole dashboard, with datasource, namespace and service variables."""

    def label_variable(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": "variable"},
            "definition": query,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "refresh": 2,
            "current": {},
        }

    return {
        "title": "Kapa autoscaling",
        "uid": "kapa-autoscaling",
        "description": "Kapa's scaler decisions, queue-proxy traffic and activator cold starts, per service.",
        "tags": ["kapa", "autoscaling"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "annotations": {"list": []},
        "templating": {
            "list": [
                {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
                label_variable(
                    "namespace", "Namespace", f"label_values({contract.SCALER_DESIRED_PODS}, {contract.LABEL_NAMESPACE})"
                ),
                label_variable(
                    "service",
                    "Service",
                    f'label_values({contract.SCALER_DESIRED_PODS}{{{contract.LABEL_NAMESPACE}=~"$namespace"}}, '
                    f"{contract.LABEL_SERVICE})",
                ),
            ]
        },
        "panels": dashboard_panels(),
    }


def rendered() -> dict[Path, str]:
    """Each generated file's path and its exact text."""
    return {
        BOOTSTRAP_FILE: json.dumps(envoy_bootstrap(), indent=2) + "\n",
        DASHBOARD_FILE: json.dumps(dashboard(), indent=2) + "\n",
        SCRAPE_CONFIGS_FILE: json.dumps(scrape_jobs(), indent=2) + "\n",
        POD_METRICS_ENDPOINTS_FILE: json.dumps(pod_metrics_endpoints(), indent=2) + "\n",
    }


def main(argv: Sequence[str] = ()) -> int:
    """Write the generated files (`python -m kapa.chartgen`)."""
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
