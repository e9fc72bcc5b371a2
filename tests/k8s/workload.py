"""What the end-to-end tests and benchmarks run on a cluster with Kapa's chart: the sample app as an enrolled
Deployment, load through Envoy, and the release's parts and counters, read from the pods themselves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import yaml

from kapa.core import contract
from tests.k8s.conftest import Cluster, Prometheus, use_scrape_configs
from tests.support import REPO


def namespace_manifest(name: str) -> str:
    return f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {name}
---"""


def app_manifest(namespace: str, name: str, template_annotations: dict[str, str], deployment_annotations: dict[str, str] | None = None,
                 replicas: int = 1) -> str:
    """A Service and an enrolled Deployment of the sample app: the Deployment carries kapa.dev/enabled as an
    annotation (the catalog's enrolment), its pod template as a label (the webhook's selector). Annotations
    on the Deployment itself can change without a rollout."""
    annotations = "".join(f'\n        {key}: "{value}"' for key, value in template_annotations.items())
    on_deployment = "".join(f'\n    {key}: "{value}"' for key, value in (deployment_annotations or {}).items())
    return f"""
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector: {{app: {name}}}
  ports:
    - name: http
      port: {contract.QUEUE_SERVING_PORT}
      targetPort: {contract.QUEUE_SERVING_PORT}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
  annotations:
    {contract.ANNOTATION_ENABLED}: "true"{on_deployment}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels:
        app: {name}
        {contract.ANNOTATION_ENABLED}: "true"
      annotations:{annotations}
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


def app_pods(cluster: Cluster, namespace: str, name: str) -> list[Any]:
    return core(cluster).list_namespaced_pod(namespace, label_selector=f"app={name}").items


def replicas(cluster: Cluster, namespace: str, name: str) -> int:
    return apps_api(cluster).read_namespaced_deployment(name, namespace).spec.replicas


def release_pods(cluster: Cluster, release: str, namespace: str) -> list[Any]:
    selector = f"app.kubernetes.io/instance={release}"
    return core(cluster).list_namespaced_pod(namespace, label_selector=selector).items


def component_pods(cluster: Cluster, release: str, namespace: str, component: str) -> list[Any]:
    """The release's ready pods of one component."""
    return [pod for pod in release_pods(cluster, release, namespace)
            if pod.metadata.labels.get("app.kubernetes.io/component") == component and pod_ready(pod)]


def component_pod(cluster: Cluster, release: str, namespace: str, component: str) -> Any:
    pods = component_pods(cluster, release, namespace, component)
    assert pods, f"no ready {component} pod\n{cluster.diagnose(namespace)}"
    return pods[0]


def envoy_url(cluster: Cluster, release: str, namespace: str) -> str:
    envoy = component_pod(cluster, release, namespace, "envoy")
    return f"http://{envoy.status.pod_ip}:{contract.ENVOY_LISTENER_PORT}/"


def install(cluster: Cluster, prometheus: Prometheus, release: str, namespace: str, values: dict[str, Any]) -> float:
    """`helm install --wait` of charts/kapa, then Prometheus fed the chart's scrape jobs; the install's seconds."""
    values_file = cluster.plane.dir / f"values-{release}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    started = time.monotonic()
    cluster.helm("install", release, str(REPO / "charts" / "kapa"), "--namespace", namespace, "--create-namespace",
                 "--values", str(values_file), "--wait", "--timeout", "4m", timeout_s=300)
    took = time.monotonic() - started
    snippet = core(cluster).read_namespaced_config_map(f"{release}-scrape-config", namespace)
    use_scrape_configs(prometheus, cluster.plane, yaml.safe_load(snippet.data["scrape_configs.yaml"]))
    return took


def scrape(address: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}{contract.METRICS_PATH}", timeout=5) as response:
        return response.read().decode()


def sample_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels` (Prometheus text exposition)."""
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
                f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_load(url: str, host: str, concurrency: int, duration: str, sleep_ms: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kapa", "load", "-c", str(concurrency), "-z", duration, "--sleep", str(sleep_ms),
         "--json", "-H", f"Host: {host}", url],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load_result(load: subprocess.Popen[str], timeout_s: float = 120) -> dict[str, Any]:
    output, errors = load.communicate(timeout=timeout_s)
    assert load.returncode == 0, f"kapa load failed: {errors[-800:]}"
    return json.loads(output)


def get(url: str, host: str, timeout_s: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
