"""How fast Kapa's replicas follow the traffic on a real control plane: actuator direct against actuator keda
(the real KEDA and HPA controller), at kube-controller-manager's default HPA sync period (15 s) and at a
short one, in one run. A benchmark that prints figures, not a pass/fail test; run it with

    .venv/bin/pytest tests/k8s/bench_reaction.py -s -p no:cacheprovider

For each sync period a control plane of its own (the period is a flag of kube-controller-manager), KEDA,
Prometheus, and for each actuator a release of the chart and the sample app (target 10 at 100 %, window 6 s,
grace period 10 s). Per combination: the first request at zero until its 200 (through Envoy, the activator,
the poke, and the actuator's 0 -> 1), a load step of 50 concurrent clients until 5 pods are ready, and the
load's end until the Deployment is at 0. With actuator keda the scaler writes every decision of 1+ pods
itself at its tick (scaler.kubernetes.ScaleActuator), so the load step should not depend on the sync period;
KEDA owns 0 <-> 1.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.k8s import controlplane, workload
from tests.k8s import keda as keda_setup
from tests.k8s.conftest import Cluster, Prometheus, running_cluster, running_prometheus, skip_unless_runnable, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

SYNC_PERIODS_S = (15.0, 2.0)
ACTUATORS = ("direct", "keda")
TARGET = 10
CONCURRENCY = 50
SLEEP_MS = 100
APP = "sample"


def _measure(cluster: Cluster, prometheus: Prometheus, actuator: str) -> dict[str, float]:
    release, namespace, apps = f"kapa-{actuator}", f"kapa-{actuator}", f"apps-{actuator}"
    workload.install(cluster, prometheus, release, namespace, {
        "actuator": actuator,
        "autoscaler": {"scale-to-zero-grace-period": "10s"},
        "prometheus": {"url": prometheus.url},
    })
    cluster.apply(workload.namespace_manifest(apps) + workload.app_manifest(apps, APP, {
        "autoscaling.knative.dev/target": str(TARGET),
        "autoscaling.knative.dev/target-utilization-percentage": "100",
        "autoscaling.knative.dev/window": "6s",
    }))
    host = f"{APP}.{apps}"

    def at_zero() -> bool:
        return workload.replicas(cluster, apps, APP) == 0 and not workload.app_pods(cluster, apps, APP)

    def ready_pods() -> int:
        return sum(workload.pod_ready(pod) for pod in workload.app_pods(cluster, apps, APP))

    wait_for(at_zero, 240, f"{apps}/{APP} at 0\n{cluster.diagnose(apps)}")
    url = workload.envoy_url(cluster, release, namespace)
    started = time.monotonic()
    status, _ = workload.get(f"{url}?sleep=1", host, 120)
    cold_start = time.monotonic() - started
    assert status == 200
    wait_for(lambda: ready_pods() == 1, 60, "one pod")
    time.sleep(8)  # the first request's concurrency leaves the 6 s window: the step starts from 1 pod, calm
    started = time.monotonic()
    load = workload.start_load(url, host, CONCURRENCY, "45s", SLEEP_MS)
    wait_for(lambda: ready_pods() >= CONCURRENCY // TARGET, 90, f"{CONCURRENCY // TARGET} ready pods")
    step = time.monotonic() - started
    result = workload.load_result(load)
    ended = time.monotonic()
    wait_for(lambda: workload.replicas(cluster, apps, APP) == 0, 240, f"{apps}/{APP} back to 0")
    to_zero = time.monotonic() - ended
    cluster.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "3m", timeout_s=240)
    workload.core(cluster).delete_namespace(apps)
    return {"cold_start_s": cold_start, "step_s": step, "to_zero_s": to_zero, "errors": result["errors"]}


def test_reaction_times_direct_and_keda_at_two_hpa_sync_periods() -> None:
    skip_unless_runnable(controlplane.skip_reason() or keda_setup.skip_reason())
    rows: list[tuple[str, float, dict[str, Any]]] = []
    for sync_s in SYNC_PERIODS_S:
        with running_cluster(hpa_sync_period_s=sync_s) as cluster, running_prometheus(cluster) as prometheus:
            keda_setup.install(cluster, cluster.plane.dir.parent / "keda")
            for actuator in ACTUATORS:
                rows.append((actuator, sync_s, _measure(cluster, prometheus, actuator)))
    print(f"\n{'actuator':<8} {'HPA sync':>8} {'0 -> 200':>9} {'1 -> 5 ready':>13} {'load end -> 0':>14} errors")
    for actuator, sync_s, figures in rows:
        print(f"{actuator:<8} {sync_s:>7.0f}s {figures['cold_start_s']:>8.1f}s {figures['step_s']:>12.1f}s "
              f"{figures['to_zero_s']:>13.1f}s {figures['errors']:>6}")
    assert all(figures["errors"] == 0 for _, _, figures in rows)
