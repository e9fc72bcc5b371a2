"""The chart's headroom (values.headroom) on a real control plane: the real kube-scheduler preempts a
placeholder the moment a scale-up's pod finds no room, schedules that pod at once, and the placeholder
Deployment re-creates the buffer, whose new pod waits for room (what a cluster-autoscaler adds a node for).

The node's free CPU is measured first and the buffer sized so that the app's pod fits only in a
placeholder's room: two placeholders of 45 % of what is free each leave 10 %, less than the app's pod (45 %).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import Cluster, wait_for
from tests.support import REPO

pytestmark = pytest.mark.timeout(240)

NAMESPACE = "headroom"
RELEASE = "hr"
BUFFER = "burst"
PLACEHOLDERS = 2


def cpu_millis(quantity: str | None) -> int:
    if not quantity:
        return 0
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def free_cpu_millis(core: Any) -> int:
    (node,) = core.list_node().items
    used = sum(
        cpu_millis(((container.resources.requests or {}) if container.resources else {}).get("cpu"))
        for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node.metadata.name}").items
        if pod.status.phase not in ("Succeeded", "Failed")
        for container in pod.spec.containers
    )
    return cpu_millis(node.status.allocatable["cpu"]) - used


def pods(core: Any, selector: str) -> list[Any]:
    return [p for p in core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
            if p.metadata.deletion_timestamp is None]


def running(pod: Any) -> bool:
    return pod.status.phase == "Running"


def test_a_scale_up_preempts_a_placeholder_and_the_buffer_is_re_created(cluster: Cluster) -> None:
    from kubernetes import client

    core, apps, scheduling = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api), client.SchedulingV1Api(cluster.api)
    size = int(free_cpu_millis(core) * 0.45)
    buffers = [{"name": BUFFER, "replicas": PLACEHOLDERS, "resources": {"requests": {"cpu": f"{size}m", "memory": "64Mi"}}}]
    rendered = cluster.helm("template", RELEASE, str(REPO / "charts" / "kapa"), "--namespace", NAMESPACE,
                            "--set", "headroom.enabled=true", "--set-json", f"headroom.buffers={json.dumps(buffers)}",
                            "--show-only", "templates/headroom.yaml").stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    (priority_class,) = [d for d in documents if d["kind"] == "PriorityClass"]
    (placeholders,) = [d for d in documents if d["kind"] == "Deployment"]
    selector = f"kapa.dev/headroom-buffer={BUFFER}"
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    try:
        scheduling.create_priority_class(priority_class)
        apps.create_namespaced_deployment(NAMESPACE, placeholders)
        wait_for(lambda: len([p for p in pods(core, selector) if running(p)]) == PLACEHOLDERS, 60,
                 f"{PLACEHOLDERS} placeholders running\n{cluster.diagnose(NAMESPACE)}")
        before = {p.metadata.name for p in pods(core, selector)}

        created = time.monotonic()
        apps.create_namespaced_deployment(NAMESPACE, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": NAMESPACE},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}}, "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {"containers": [{"name": "app", "image": "none", "command": ["sleep", "infinity"],
                                         "resources": {"requests": {"cpu": f"{size}m", "memory": "64Mi"}}}]}}},
        })
        wait_for(lambda: any(running(p) for p in pods(core, "app=app")), 60,
                 f"the app's pod running in a placeholder's room\n{cluster.diagnose(NAMESPACE)}")
        started_s = time.monotonic() - created

        after = pods(core, selector)
        survivors = {p.metadata.name for p in after} & before
        assert len(survivors) == PLACEHOLDERS - 1, (before, [p.metadata.name for p in after])  # exactly one preempted
        # The buffer is re-created: its new placeholder waits for room (the signal for a node to be added).
        wait_for(lambda: len(pods(core, selector)) == PLACEHOLDERS, 30, "the preempted placeholder re-created")
        (waiting,) = [p for p in pods(core, selector) if p.metadata.name not in before]
        wait_for(lambda: any(c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                             for c in core.read_namespaced_pod(waiting.metadata.name, NAMESPACE).status.conditions or []),
                 30, "the new placeholder pending for want of room")
        events = core.list_namespaced_event(NAMESPACE, field_selector="reason=Preempted").items
        print(f"headroom: the app's pod running {started_s:.1f} s after its Deployment was created, in a "
              f"preempted placeholder's room ({size} m CPU); {len(events)} Preempted event(s); the buffer's "
              "new placeholder is pending")
    finally:
        core.delete_namespace(NAMESPACE)
        try:
            scheduling.delete_priority_class(priority_class["metadata"]["name"])
        except client.exceptions.ApiException:
            pass
