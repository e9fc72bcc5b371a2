"""Package fixtures: the pod bridge, a real control plane, the process kubelet and Prometheus, started once for
tests/k8s and stopped when its last test is done (not at the end of the whole test run).

Everything is torn down in reverse, and `network.sweep()` runs last whatever happened, so no namespace,
veth, bridge or process outlives the session. The tests skip (saying how to enable them) when the built
binaries or root are missing; `.ci/run` builds the binaries first, so there they always run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import yaml

from tests.k8s import controlplane, network, session
from tests.k8s.controlplane import BIN_DIR, ControlPlane
from tests.support import REPO, free_port, stop_process, wait_for_http

if TYPE_CHECKING:
    from tests.k8s.keda import Keda

NODE = "kapa-node"
T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.5) -> T:
    """Poll `check` until it returns a truthy value; fail naming `what` and the last value or error."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as error:  # noqa: BLE001 - the cluster may not have the object yet
            last = repr(error)
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s}s (last: {last})")


@dataclass(frozen=True)
class Cluster:
    plane: ControlPlane
    kubelet_root: Path
    kubelet_log: Path
    api: Any  # kubernetes.client.ApiClient

    def helm(self, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
        command = [str(BIN_DIR / "helm"), *args, "--kubeconfig", str(self.plane.kubeconfig)]
        result = subprocess.run(command, capture_output=True, text=True, env=self.plane.env(), timeout=timeout_s)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}\n{self.diagnose()}")
        return result

    def apply(self, manifest: str) -> None:
        """Create every object of a YAML stream (create only: the tests own their objects)."""
        from kubernetes import utils

        utils.create_from_yaml(self.api, yaml_objects=list(yaml.safe_load_all(manifest)))

    def pod_log(self, pod: Any, container: str) -> str:
        path = self.kubelet_root / "pods" / pod.metadata.uid / "logs" / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnose(self, namespace: str | None = None) -> str:
        """Pods, their states and the kubelet's last lines: what a failing assertion should show."""
        from kubernetes import client

        lines = []
        try:
            core = client.CoreV1Api(self.api)
            pods = (core.list_namespaced_pod(namespace) if namespace else core.list_pod_for_all_namespaces()).items
            for pod in pods:
                statuses = [(s.name, s.ready, s.restart_count) for s in pod.status.container_statuses or []]
                lines.append(f"pod {pod.metadata.namespace}/{pod.metadata.name} {pod.status.phase} "
                             f"ip={pod.status.pod_ip} node={pod.spec.node_name} {statuses}")
                for status in pod.status.container_statuses or []:
                    if not status.ready:
                        lines.append(f"  {status.name} log:\n" + self.pod_log(pod, status.name)[-1500:])
        except Exception as error:  # noqa: BLE001
            lines.append(f"(cannot list pods: {error!r})")
        lines.append("kubelet log tail:\n" + self.kubelet_log.read_text(errors="replace")[-3000:])
        return "\n".join(lines)


def _node_ready(api: Any) -> bool:
    from kubernetes import client

    node = client.CoreV1Api(api).read_node(NODE)
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def skip_unless_runnable(reason: str | None) -> None:
    """Skip with `reason` (what to build or install); in CI the suite turns that skip into a failure
    (tests/conftest.py)."""
    if reason is not None:
        pytest.skip(reason)


@contextlib.contextmanager
def running_cluster(hpa_sync_period_s: float = controlplane.DEFAULT_HPA_SYNC_PERIOD_S) -> Iterator[Cluster]:
    """The pod bridge, a control plane and the process kubelet, for one session (tests or a benchmark)."""
    with session.exclusive(timeout_s=900):
        # Not under pytest's basetemp: concurrent pytest runs prune old basetemps, and not under /tmp, which
        # pods commonly mount an emptyDir over (the kubelet's volume sources must stay visible to them).
        root = Path(tempfile.mkdtemp(prefix="kapa-k8s-", dir="/var/tmp"))
        network.create_bridge()
        try:
            with controlplane.control_plane(root / "plane", hpa_sync_period_s=hpa_sync_period_s) as plane:
                yield from _with_kubelet(plane, root)
        finally:
            network.sweep()
            if os.environ.get("KAPA_K8S_KEEP"):
                print(f"kept the cluster's files in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    skip_unless_runnable(controlplane.skip_reason())
    with running_cluster() as started:
        yield started


def _with_kubelet(plane: ControlPlane, root: Path) -> Iterator[Cluster]:
    kubelet_root = root / "kubelet"
    kubelet_log = root / "kubelet.log"
    with open(kubelet_log, "wb") as log:
        kubelet = subprocess.Popen(
            [sys.executable, "-m", "tests.k8s.kubelet", "--kubeconfig", str(plane.kubeconfig),
             "--root", str(kubelet_root), "--node", NODE],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        session.record(kubelet.pid)
        try:
            api = plane.api_client()
            wait_for(lambda: _node_ready(api), 60, "node Ready")
            yield Cluster(plane, kubelet_root, kubelet_log, api)
        finally:
            stop_process(kubelet, grace_s=30)


@pytest.fixture(scope="package")
def keda(cluster: Cluster) -> Keda:
    """The real KEDA (operator and metrics API server) running as pods, its external metrics API served.

    Left running until the cluster goes: nothing outlives the control plane it is registered with."""
    from tests.k8s import keda as keda_setup  # imported here: it imports this module

    skip_unless_runnable(keda_setup.skip_reason())
    started = keda_setup.install(cluster, cluster.plane.dir.parent / "keda")
    print(f"keda v{keda_setup.KEDA_VERSION} serving external metrics {started.started_in_s:.1f} s after install")
    return started


@dataclass(frozen=True)
class Prometheus:
    url: str
    config: Path


@contextlib.contextmanager
def running_prometheus(cluster: Cluster) -> Iterator[Prometheus]:
    """Real Prometheus (built: Debian's lacks Kubernetes discovery) in the root namespace, on the bridge
    address so the scaler's pod can query it, finding its targets through Kubernetes service discovery
    (role pod) against the test API server. Its scrape jobs are the chart's own (the rendered scrape-config
    ConfigMap), given once the chart is installed by `use_scrape_configs`; until then it scrapes nothing."""
    root = cluster.plane.dir.parent / "prometheus"
    root.mkdir()
    port = free_port()
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                      "scrape_configs": []}))
    address = f"{network.GATEWAY_IP}:{port}"
    with open(root / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [str(BIN_DIR / "prometheus"), f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address={address}", "--web.enable-lifecycle", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        session.record(process.pid)
        try:
            wait_for_http(f"http://{address}/-/ready", timeout_s=60)
            yield Prometheus(f"http://{address}", config)
        finally:
            stop_process(process)


@pytest.fixture(scope="package")
def prometheus(cluster: Cluster) -> Iterator[Prometheus]:
    with running_prometheus(cluster) as started:
        yield started


def use_scrape_configs(prometheus: Prometheus, plane: ControlPlane, scrape_configs: list[dict[str, Any]]) -> None:
    """Point every kubernetes_sd_config at the test API server with the admin credentials; reload."""
    import urllib.request

    for job in scrape_configs:
        for sd in job.get("kubernetes_sd_configs") or []:
            sd["api_server"] = plane.server
            sd["tls_config"] = {"ca_file": str(plane.ca_file), "cert_file": str(plane.client_cert),
                                "key_file": str(plane.client_key)}
    prometheus.config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                                 "scrape_configs": scrape_configs}))
    request = urllib.request.Request(f"{prometheus.url}/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
