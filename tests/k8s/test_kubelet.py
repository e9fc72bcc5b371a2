"""The process kubelet does what the end-to-end scenarios rely on: volumes at their paths (without hiding the
venv, the clone or its own files), the downward API, exec readiness inside the container's mounts, liveness
restarts, and SIGTERM-then-SIGKILL on deletion."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest

from tests.k8s import network
from tests.k8s.conftest import Cluster, wait_for
from tests.k8s.kubelet import VENV_BIN
from tests.support import REPO

pytestmark = pytest.mark.timeout(180)

NAMESPACE = "kubelet-check"
SCRIPT = (
    "echo name=$MY_NAME ns=$MY_NS ip=$MY_IP greeting=$(cat /etc/cfg/greeting) "
    "token=$(test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo yes) "
    "hosts=$(grep -c kubernetes.default.svc /etc/hosts) "
    f"kept=$(test -x {VENV_BIN}/kapa && test -f {REPO}/kapa/cli.py && echo yes); "
    "trap 'echo got TERM' TERM; sleep 1; touch /scratch/ready; while true; do sleep 0.2; done"
)


def pod_manifest() -> dict[str, Any]:
    field = lambda path: {"fieldRef": {"fieldPath": path}}  # noqa: E731
    return {
        "metadata": {"name": "checked", "namespace": NAMESPACE},
        "spec": {
            "terminationGracePeriodSeconds": 3,
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "scratch", "emptyDir": {}},
                        {"name": "cover", "emptyDir": {}}],
            "containers": [
                {
                    "name": "main", "image": "ignored", "command": ["sh", "-c", SCRIPT],
                    "env": [{"name": "MY_NAME", "valueFrom": field("metadata.name")},
                            {"name": "MY_NS", "valueFrom": field("metadata.namespace")},
                            {"name": "MY_IP", "valueFrom": field("status.podIP")}],
                    # `cover` hides the clone, the venv and the kubelet's directory (under /var/tmp), as an
                    # emptyDir at /tmp does when CI clones there: they must stay visible all the same.
                    "volumeMounts": [{"name": "cover", "mountPath": str(REPO.parent)},
                                     {"name": "cover", "mountPath": "/var/tmp"},
                                     {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                                     {"name": "scratch", "mountPath": "/scratch"}],
                    "readinessProbe": {"exec": {"command": ["test", "-f", "/scratch/ready"]}, "periodSeconds": 1},
                },
                {
                    # Nothing listens on port 9: the liveness probe fails and the container restarts.
                    "name": "flaky", "image": "ignored", "command": ["sleep", "1000"],
                    "livenessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2},
                },
            ],
        },
    }


def test_pod_lifecycle(cluster: Cluster) -> None:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    try:
        wait_for(lambda: core.read_namespaced_service_account("default", NAMESPACE), 30, "default ServiceAccount")
        core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "cfg"}, "data": {"greeting": "hello"}})
        core.create_namespaced_pod(NAMESPACE, pod_manifest())

        def main_ready() -> Any:
            pod = core.read_namespaced_pod("checked", NAMESPACE)
            statuses = {s.name: s for s in pod.status.container_statuses or []}
            return pod if statuses.get("main") and statuses["main"].ready else None

        pod = wait_for(main_ready, 60, f"exec readiness of main\n{cluster.diagnose(NAMESPACE)}")
        assert ipaddress.ip_address(pod.status.pod_ip) in network.POD_CIDR
        log = cluster.pod_log(pod, "main")
        expected = f"name=checked ns={NAMESPACE} ip={pod.status.pod_ip} greeting=hello token=yes hosts=1 kept=yes"
        assert expected in log, log

        def restarted() -> bool:
            statuses = core.read_namespaced_pod("checked", NAMESPACE).status.container_statuses
            return any(s.name == "flaky" and s.restart_count >= 1 for s in statuses)

        wait_for(restarted, 60, f"liveness restart of flaky\n{cluster.diagnose(NAMESPACE)}")

        started = time.monotonic()
        core.delete_namespaced_pod("checked", NAMESPACE)

        def gone() -> bool:
            return not core.list_namespaced_pod(NAMESPACE).items

        wait_for(gone, 30, f"pod removed\n{cluster.diagnose(NAMESPACE)}", interval_s=0.2)
        took = time.monotonic() - started
        # main ignores SIGTERM: it is killed when the 3 s grace period runs out, not before, not much after.
        assert 3.0 <= took < 10.0, took
        assert "got TERM" in cluster.pod_log(pod, "main")
    finally:
        core.delete_namespace(NAMESPACE)


def test_jobs_run_to_completion(cluster: Cluster) -> None:
    """A Job's pod (restartPolicy Never) ends Succeeded or Failed by its exit code, and the Job controller
    completes or fails the Job: what the chart's pre-delete hook (kapa detach) relies on."""
    from kubernetes import client

    namespace = "kubelet-jobs"
    core, batch = client.CoreV1Api(cluster.api), client.BatchV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": namespace}})

    def job(name: str, command: list[str]) -> dict[str, Any]:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
                "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                    {"name": "run", "image": "none", "command": command}]}}}}

    def condition(name: str) -> str | None:
        conditions = batch.read_namespaced_job(name, namespace).status.conditions or []
        return next((c.type for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"), None)

    try:
        batch.create_namespaced_job(namespace, job("passes", ["true"]))
        batch.create_namespaced_job(namespace, job("fails", ["false"]))
        wait_for(lambda: condition("passes") and condition("fails"), 60, f"both jobs done\n{cluster.diagnose(namespace)}")
        assert (condition("passes"), condition("fails")) == ("Complete", "Failed")
        phases = {pod.metadata.labels["job-name"]: pod.status.phase for pod in core.list_namespaced_pod(namespace).items}
        assert phases == {"passes": "Succeeded", "fails": "Failed"}
    finally:
        core.delete_namespace(namespace)
