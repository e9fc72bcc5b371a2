"""Kapa on a real control plane: helm install, sidecar injection, scale from zero through Envoy and the
activator, scale up under load, back to zero, and a clean uninstall.

The scenarios run in order and share one release (module-scoped), because each builds on the last; every
wait is bounded and fails with the cluster's state (pods, container logs, kubelet log) in the message.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kapa import contract
from tests.k8s import network
from tests.k8s.conftest import Cluster, Prometheus, use_scrape_configs, wait_for
from tests.support import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RELEASE = "kapa"
NAMESPACE = "kapa"
APPS = "apps"
SAMPLE = "sample"
TARGET = 10
LOAD_CONCURRENCY = 50
SLEEP_MS = 100
GRACE_S = 10

SAMPLE_MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {APPS}
---
apiVersion: v1
kind: Service
metadata:
  name: {SAMPLE}
  namespace: {APPS}
spec:
  selector: {{app: {SAMPLE}}}
  ports:
    - name: http
      port: {contract.QUEUE_SERVING_PORT}
      targetPort: {contract.QUEUE_SERVING_PORT}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {SAMPLE}
  namespace: {APPS}
  annotations:
    {contract.ANNOTATION_ENABLED}: "true"
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {SAMPLE}}}
  template:
    metadata:
      labels:
        app: {SAMPLE}
        {contract.ANNOTATION_ENABLED}: "true"
      # On the pod template, as Knative has them on a revision: the webhook sees only the pod, the scaler
      # reads both (the template's win).
      annotations:
        autoscaling.knative.dev/target: "{TARGET}"
        autoscaling.knative.dev/target-utilization-percentage: "100"
        autoscaling.knative.dev/window: "6s"
        # Malformed on purpose: the default is used and the scaler reports it as an Event on the Deployment.
        autoscaling.knative.dev/panic-threshold-percentage: "lots"
        {contract.ANNOTATION_TIMEOUT_SECONDS}: "10"
    spec:
      containers:
        - name: app
          image: kapa:test
          command: ["kapa", "sample-app"]
          ports:
            - name: user-port
              containerPort: {contract.USER_PORT}
          readinessProbe:
            httpGet: {{path: {contract.READY_PATH}, port: {contract.USER_PORT}}}
            periodSeconds: 1
"""


def core(cluster: Cluster) -> Any:
    from kubernetes import client

    return client.CoreV1Api(cluster.api)


def apps_api(cluster: Cluster) -> Any:
    from kubernetes import client

    return client.AppsV1Api(cluster.api)


def pod_ready(pod: Any) -> bool:
    return pod.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def release_pods(cluster: Cluster) -> list[Any]:
    selector = f"app.kubernetes.io/instance={RELEASE}"
    return core(cluster).list_namespaced_pod(NAMESPACE, label_selector=selector).items


def component_pod(cluster: Cluster, component: str) -> Any:
    pods = [pod for pod in release_pods(cluster)
            if pod.metadata.labels.get("app.kubernetes.io/component") == component and pod_ready(pod)]
    assert pods, f"no ready {component} pod\n{cluster.diagnose(NAMESPACE)}"
    return pods[0]


def sample_pods(cluster: Cluster) -> list[Any]:
    return core(cluster).list_namespaced_pod(APPS, label_selector=f"app={SAMPLE}").items


def replicas(cluster: Cluster) -> int:
    return apps_api(cluster).read_namespaced_deployment(SAMPLE, APPS).spec.replicas


def envoy_url(cluster: Cluster) -> str:
    return f"http://{component_pod(cluster, 'envoy').status.pod_ip}:{contract.ENVOY_LISTENER_PORT}/"


def get(url: str, host: str, timeout_s: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def release(cluster: Cluster, prometheus: Prometheus) -> Iterator[Cluster]:
    """`helm install` of charts/kapa with the direct actuator, then Prometheus fed the chart's scrape jobs."""
    values = {
        "actuator": "direct",
        # Shortened (default 30 s) so the scale-to-zero scenarios take seconds.
        "autoscaler": {"scale-to-zero-grace-period": f"{GRACE_S}s"},
        "prometheus": {"url": prometheus.url},
        "services": [{"name": SAMPLE, "namespace": APPS}],
    }
    values_file = cluster.plane.dir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    started = time.monotonic()
    cluster.helm("install", RELEASE, str(REPO / "charts" / "kapa"), "--namespace", NAMESPACE, "--create-namespace",
                 "--values", str(values_file), "--wait", "--timeout", "4m", timeout_s=300)
    print(f"helm install --wait: {time.monotonic() - started:.1f} s")
    snippet = core(cluster).read_namespaced_config_map(f"{RELEASE}-scrape-config", NAMESPACE)
    use_scrape_configs(prometheus, cluster.plane, yaml.safe_load(snippet.data["scrape_configs.yaml"]))
    try:
        yield cluster
    finally:
        try:
            core(cluster).delete_namespace(APPS)
        except Exception:  # noqa: BLE001 - absent when an earlier scenario failed before creating it
            pass


def test_helm_install_every_pod_ready(release: Cluster) -> None:
    pods = release_pods(release)
    components = {pod.metadata.labels.get("app.kubernetes.io/component") for pod in pods}
    assert {"scaler", "activator", "envoy", "webhook"} <= components, release.diagnose(NAMESPACE)
    not_ready = [pod.metadata.name for pod in pods if not pod_ready(pod)]
    assert not not_ready, f"not Ready: {not_ready}\n{release.diagnose(NAMESPACE)}"
    for pod in pods:
        assert ipaddress.ip_address(pod.status.pod_ip) in network.POD_CIDR, pod.metadata.name


def test_enrolled_deployment_gets_its_sidecar(release: Cluster) -> None:
    release.apply(SAMPLE_MANIFEST)

    def ready_pod() -> Any:
        return next((pod for pod in sample_pods(release) if pod_ready(pod)), None)

    pod = wait_for(ready_pod, 90, f"a Ready {SAMPLE} pod\n{release.diagnose(APPS)}")
    containers = [c.name for c in pod.spec.containers]
    assert containers == ["app", "queue-proxy"], containers
    queue_proxy = pod.spec.containers[1]
    assert queue_proxy.command == ["kapa", "queue-proxy"]
    # The app's readiness now goes through the queue-proxy, and the grace period covers the timeout.
    assert pod.spec.containers[0].readiness_probe.http_get.port == contract.QUEUE_ADMIN_PORT
    assert pod.spec.termination_grace_period_seconds >= 10
    status, body = get(f"http://{pod.status.pod_ip}:{contract.QUEUE_SERVING_PORT}/?sleep=1", SAMPLE, 10)
    assert status == 200 and b"slept 1 ms" in body


def test_bad_annotation_becomes_an_event_on_the_deployment(release: Cluster) -> None:
    def warnings() -> list[Any]:
        events = core(release).list_namespaced_event(APPS, field_selector=f"involvedObject.name={SAMPLE}").items
        return [e for e in events if e.reason == contract.EVENT_REASON_INVALID_ANNOTATION and e.involved_object.kind == "Deployment"]

    events = wait_for(warnings, 30, "the scaler's Warning event")
    assert "autoscaling.knative.dev/panic-threshold-percentage" in events[0].message, events[0].message
    assert events[0].source.component == "kapa-scaler"


def test_scales_to_zero_then_from_zero_through_envoy_and_activator(release: Cluster) -> None:
    # No traffic since the pod started: the scaler takes the Deployment to zero after the grace period.
    wait_for(lambda: replicas(release) == 0, 150, f"{SAMPLE} scaled to 0\n{release.diagnose(NAMESPACE)}")
    wait_for(lambda: not sample_pods(release), 90, f"{SAMPLE} pods gone\n{release.diagnose(APPS)}")
    url = envoy_url(release)
    started = time.monotonic()
    status, body = get(f"{url}?sleep={SLEEP_MS}", f"{SAMPLE}.{APPS}", 90)
    cold_start = time.monotonic() - started
    assert status == 200, f"{status} {body[:300]!r}\n{release.diagnose(APPS)}"
    assert f"slept {SLEEP_MS} ms".encode() in body
    assert replicas(release) >= 1
    print(f"cold start through Envoy and the activator: {cold_start:.1f} s")


def test_scales_to_five_under_load_then_back_to_zero(release: Cluster) -> None:
    url = envoy_url(release)
    load = subprocess.Popen(
        [sys.executable, "-m", "kapa", "load", "-c", str(LOAD_CONCURRENCY), "-z", "60s", "--sleep", str(SLEEP_MS),
         "-H", f"Host: {SAMPLE}.{APPS}", url],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline and load.poll() is None:
            seen.append(replicas(release))
            if seen[-1] >= LOAD_CONCURRENCY // TARGET and sum(pod_ready(p) for p in sample_pods(release)) >= 5:
                break
            time.sleep(1)
    finally:
        load.terminate()
        output, _ = load.communicate(timeout=30)
    expected = LOAD_CONCURRENCY // TARGET
    print(f"replicas seen under load: {seen}\n{output[-800:]}")
    assert max(seen) == expected, f"replicas seen {seen}, expected a peak of {expected}\n{release.diagnose(APPS)}"
    # Idle again: back to zero once the stable window has no traffic and the grace period has passed.
    wait_for(lambda: replicas(release) == 0, 150, f"{SAMPLE} back to 0\n{release.diagnose(NAMESPACE)}")


def test_prometheus_found_the_pods_through_kubernetes_discovery(release: Cluster, prometheus: Prometheus) -> None:
    """The scale-up above came from these series: queue-proxies scraped at their pod IPs, found by role pod."""
    query = urllib.parse.urlencode({"query": f'{contract.REQUESTS}{{namespace="{APPS}"}}'})
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/query?{query}", timeout=10) as response:
        series = json.load(response)["data"]["result"]
    pods = {item["metric"].get("pod") for item in series}
    assert len(pods) >= LOAD_CONCURRENCY // TARGET, series
    addresses = {item["metric"]["instance"].rsplit(":", 1)[0] for item in series}
    assert all(ipaddress.ip_address(address) in network.POD_CIDR for address in addresses), addresses


def test_helm_uninstall_leaves_nothing_behind(release: Cluster) -> None:
    from kubernetes import client

    core(release).delete_namespace(APPS)
    wait_for(lambda: APPS not in {n.metadata.name for n in core(release).list_namespace().items}, 120,
             f"namespace {APPS} deleted\n{release.diagnose(APPS)}")
    release.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "3m", timeout_s=240)
    selector = f"app.kubernetes.io/instance={RELEASE}"
    rbac = client.RbacAuthorizationV1Api(release.api)
    admission = client.AdmissionregistrationV1Api(release.api)
    autoscaling = client.AutoscalingV2Api(release.api)

    def leftovers() -> list[str]:
        found = []
        for kind, items in [
            ("Pod", core(release).list_pod_for_all_namespaces(label_selector=selector).items),
            ("Deployment", apps_api(release).list_deployment_for_all_namespaces(label_selector=selector).items),
            ("Service", core(release).list_service_for_all_namespaces(label_selector=selector).items),
            ("ConfigMap", core(release).list_config_map_for_all_namespaces(label_selector=selector).items),
            ("Secret", core(release).list_secret_for_all_namespaces(label_selector=selector).items),
            ("ServiceAccount", core(release).list_service_account_for_all_namespaces(label_selector=selector).items),
            ("ClusterRole", rbac.list_cluster_role(label_selector=selector).items),
            ("ClusterRoleBinding", rbac.list_cluster_role_binding(label_selector=selector).items),
            ("Role", rbac.list_role_for_all_namespaces(label_selector=selector).items),
            ("RoleBinding", rbac.list_role_binding_for_all_namespaces(label_selector=selector).items),
            ("MutatingWebhookConfiguration",
             admission.list_mutating_webhook_configuration(label_selector=selector).items),
            ("HorizontalPodAutoscaler",
             autoscaling.list_horizontal_pod_autoscaler_for_all_namespaces(label_selector=selector).items),
        ]:
            found += [f"{kind} {item.metadata.namespace or ''}/{item.metadata.name}" for item in items]
        # Pods of the release are deleted with their ReplicaSets; wait for them, not just for Helm.
        found += [f"Pod {NAMESPACE}/{pod.metadata.name}" for pod in core(release).list_namespaced_pod(NAMESPACE).items]
        found += [f"Secret {NAMESPACE}/{s.metadata.name}" for s in core(release).list_namespaced_secret(NAMESPACE).items
                  if s.type.startswith("helm.sh/")]
        return found

    deadline = time.monotonic() + 120
    while leftovers() and time.monotonic() < deadline:
        time.sleep(1)
    assert not leftovers(), f"left behind: {leftovers()}\n{release.diagnose(NAMESPACE)}"
