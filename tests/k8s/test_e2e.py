"""Kapa on a real control plane: helm install, sidecar injection, scale from zero through Envoy and the
activator, scale up under load, back to zero, and a clean uninstall.

The scenarios run in order and share one release (module-scoped), because each builds on the last; every
wait is bounded and fails with the cluster's state (pods, container logs, kubelet log) in the message.
"""

from __future__ import annotations

import ipaddress
import time
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
    autoscaling.knative.dev/target: "{TARGET}"
    autoscaling.knative.dev/target-utilization-percentage: "100"
    autoscaling.knative.dev/window: "6s"
    {contract.ANNOTATION_TIMEOUT_SECONDS}: "10"
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {SAMPLE}}}
  template:
    metadata:
      labels:
        app: {SAMPLE}
        {contract.ANNOTATION_ENABLED}: "true"
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
