"""kapa.kube.detach against the real API server (and the test kubelet running the pods): what `helm uninstall`
runs first hands each enrolled workload back to plain Kubernetes, touches nothing else, and can run again.
The whole uninstall, through the chart's hook: tests/k8s/test_e2e.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kapa.core import contract
from kapa.kube.detach import detach
from kapa.kube.inject import SERVING_PORT_NAME
from tests.k8s.conftest import Cluster

pytestmark = pytest.mark.timeout(180)

APPS = "detach-apps"
SYSTEM = "detach-system"
APP_PORT = 8080


def deployment(namespace: str, name: str, replicas: int, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                {"name": "app", "image": "none", "command": ["sleep", "600"],
                 "ports": [{"name": "user-port", "containerPort": APP_PORT}]}]}},
        },
    }


def service(name: str, target_port: int | str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": APPS},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": target_port}]}}


def hpa(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": APPS, "labels": labels},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": 1, "maxReplicas": 5,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "Utilization", "averageUtilization": 70}}}]}}


def test_detach_hands_back_only_what_kapa_changed(cluster: Cluster) -> None:
    from kubernetes import client

    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)
    autoscaling = client.AutoscalingV2Api(cluster.api)
    enrolled = {contract.ANNOTATION_ENABLED: "true"}
    for namespace in (APPS, SYSTEM):
        core.create_namespace({"metadata": {"name": namespace}})
    try:
        apps.create_namespaced_deployment(SYSTEM, deployment(SYSTEM, "scaler", 1, {}))
        # Taken to zero by Kapa, min-scale 2 (read as the scaler reads it); and one serving, left as it is.
        min_scale = contract.knative_annotation("min-scale")
        apps.create_namespaced_deployment(APPS, deployment(APPS, "idle", 0, {**enrolled, min_scale: "2"}))
        apps.create_namespaced_deployment(APPS, deployment(APPS, "busy", 1, enrolled))
        apps.create_namespaced_deployment(APPS, deployment(APPS, "plain", 0, {}))  # not enrolled: not Kapa's
        core.create_namespaced_service(APPS, service("idle", contract.QUEUE_SERVING_PORT))
        core.create_namespaced_service(APPS, service("busy", SERVING_PORT_NAME))  # as injection names it
        core.create_namespaced_service(APPS, service("plain", contract.QUEUE_SERVING_PORT))
        autoscaling.create_namespaced_horizontal_pod_autoscaler(APPS, hpa("busy", {"app.kubernetes.io/managed-by": "kapa"}))
        autoscaling.create_namespaced_horizontal_pod_autoscaler(APPS, hpa("plain", {}))
        deadline = time.monotonic() + 60
        while not core.list_namespaced_pod(SYSTEM, label_selector="app=scaler").items:
            assert time.monotonic() < deadline, "the scaler's pod never appeared"
            time.sleep(0.5)

        changes = detach(cluster.api, SYSTEM, "scaler", [APPS])

        assert apps.read_namespaced_deployment("scaler", SYSTEM).spec.replicas == 0
        assert core.list_namespaced_pod(SYSTEM, label_selector="app=scaler").items == []  # waited for
        replicas = {d.metadata.name: d.spec.replicas for d in apps.list_namespaced_deployment(APPS).items}
        assert replicas == {"idle": 2, "busy": 1, "plain": 0}
        targets = {s.metadata.name: s.spec.ports[0].target_port for s in core.list_namespaced_service(APPS).items}
        assert targets == {"idle": APP_PORT, "busy": APP_PORT, "plain": contract.QUEUE_SERVING_PORT}
        left = {h.metadata.name for h in autoscaling.list_namespaced_horizontal_pod_autoscaler(APPS).items}
        assert left == {"plain"}
        assert len(changes) == 5, changes  # scaler, HPA, idle's scale, two Services
        assert detach(cluster.api, SYSTEM, "scaler", [APPS]) == []  # nothing left to do: it can run again
    finally:
        for namespace in (APPS, SYSTEM):
            core.delete_namespace(namespace)
