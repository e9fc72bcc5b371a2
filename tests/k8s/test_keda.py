"""The real KEDA and the real HPA controller move a Deployment exactly as an external scaler says, through the
ScaledObject Kapa writes (kapa.kube.scaledobject: external-push trigger, HPA behaviour without smoothing).

The external scaler is a gRPC peer in this test, speaking KEDA's protocol (scaler/proto) with answers the test
sets, on the pod bridge's address so the operator's pod can dial it. It encodes the desired count as Kapa's
scaler does (scaler/grpc_server.py): one metric with target 1, whose value is the desired count, so the HPA's
AverageValue arithmetic gives ceil(value / 1) = the desired count.

Scenarios, in order, on one Deployment of `sleep` pods: (a) StreamIsActive true takes it 0 -> 1 (KEDA's
push path); (b) a desired 4 takes it to 4 through the HPA and it stays there; (c) inactive with 0 takes it
back to 0 (KEDA); (d) at 10 pods a desired 11 is within the HPA's default 10 % tolerance, which holds 10; with
`behavior.scaleUp/scaleDown.tolerance: "0"` (HPAConfigurableTolerance, beta and on by default since
Kubernetes 1.35) KEDA passes the field to its HPA and 11, then 10 again, reach the Deployment.

Timings print as they are measured (`pytest -s`). Assertions are invariants (never above the desired count,
settles at it, stays there), with generous bounds for a busy 2-core machine.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import grpc
import pytest

from kapa.kube.scaledobject import KEDA_API_VERSION, scaled_object
from kapa.core.settings import AutoscalerConfig
from scaler.grpc_server import TARGET_SIZE, metric_name, service_key
from scaler.proto import externalscaler_pb2 as pb
from scaler.proto import externalscaler_pb2_grpc as pb_grpc
from tests.k8s import network
from tests.k8s.conftest import Cluster, wait_for
from tests.k8s.controlplane import DEFAULT_HPA_SYNC_PERIOD_S
from tests.k8s.keda import Keda
from tests.support import free_port

# The session lock may be held by another run for many minutes before the cluster starts.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

NAMESPACE = "keda-scaling"
APP = "sleeper"
KEDA_GROUP, KEDA_VERSION = KEDA_API_VERSION.split("/")
#: kube-controller-manager's default --horizontal-pod-autoscaler-tolerance (the test plane keeps it).
HPA_DEFAULT_TOLERANCE = Decimal("0.1")
#: Long enough for several HPA syncs and a KEDA reconcile on a busy machine.
SETTLE_TIMEOUT_S = 60.0
#: How long a settled count is watched to show it stays (every 0.5 s).
HOLD_S = 10.0
#: The services' scale-to-zero grace period, hence the ScaledObject's cooldownPeriod.
GRACE_S = 10


# --- the external scaler peer ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    active: bool
    desired_pods: int


class ScriptedScaler(pb_grpc.ExternalScalerServicer):
    """KEDA's external scaler answering what the test last set, as Kapa's scaler would for that decision:
    IsActive = active, StreamIsActive pushes each change of it at once, GetMetrics = the desired count.

    Served by grpc's thread-pool server (grpc's threads, not ours), so the test body stays blocking code."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._answer = Answer(active=False, desired_pods=0)
        self.calls: Counter[str] = Counter()

    def set(self, active: bool, desired_pods: int) -> None:
        with self._changed:
            self._answer = Answer(active, desired_pods)
            self._changed.notify_all()

    def _current(self, rpc: str) -> Answer:
        with self._changed:
            self.calls[rpc] += 1
            return self._answer

    def IsActive(self, request: pb.ScaledObjectRef, context: grpc.ServicerContext) -> pb.IsActiveResponse:
        return pb.IsActiveResponse(result=self._current("IsActive").active)

    def StreamIsActive(
        self, request: pb.ScaledObjectRef, context: grpc.ServicerContext
    ) -> Iterator[pb.IsActiveResponse]:
        sent = self._current("StreamIsActive").active
        yield pb.IsActiveResponse(result=sent)
        while context.is_active():
            with self._changed:
                # Wakes on a change, and every second to notice KEDA (or the server) closing the stream.
                self._changed.wait_for(lambda: self._answer.active != sent, timeout=1.0)
                active = self._answer.active
            if active != sent:
                sent = active
                yield pb.IsActiveResponse(result=active)

    def GetMetricSpec(self, request: pb.ScaledObjectRef, context: grpc.ServicerContext) -> pb.GetMetricSpecResponse:
        self._current("GetMetricSpec")
        spec = pb.MetricSpec(metricName=metric_name(service_key(request)), targetSize=TARGET_SIZE,
                             targetSizeFloat=float(TARGET_SIZE))
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    def GetMetrics(self, request: pb.GetMetricsRequest, context: grpc.ServicerContext) -> pb.GetMetricsResponse:
        desired = self._current("GetMetrics").desired_pods
        value = pb.MetricValue(metricName=request.metricName, metricValue=desired, metricValueFloat=float(desired))
        return pb.GetMetricsResponse(metricValues=[value])


@dataclass(frozen=True)
class Peer:
    scaler: ScriptedScaler
    address: str


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    scaler = ScriptedScaler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_ExternalScalerServicer_to_server(scaler, server)
    address = f"{network.GATEWAY_IP}:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield Peer(scaler, address)
    finally:
        server.stop(grace=1).wait()


# --- the scaled Deployment ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """The Deployment KEDA scales, its ScaledObject (as Kapa wrote it) and the APIs to watch them."""

    keda: Keda
    peer: Peer
    manifest: dict[str, Any]
    apps: Any
    custom: Any
    autoscaling: Any

    @property
    def hpa_name(self) -> str:
        return f"keda-hpa-{APP}"  # KEDA's name for a ScaledObject's HPA

    def replicas(self) -> tuple[int, int, int]:
        """The Deployment's (spec, status, ready) replica counts."""
        deployment = self.apps.read_namespaced_deployment(APP, NAMESPACE)
        return (deployment.spec.replicas or 0, deployment.status.replicas or 0,
                deployment.status.ready_replicas or 0)

    def hpa(self) -> Any:
        return self.autoscaling.read_namespaced_horizontal_pod_autoscaler(self.hpa_name, NAMESPACE)

    def diagnose(self) -> str:
        return f"scaler calls {dict(self.peer.scaler.calls)}\n{self.keda.logs()}"


def sleeper() -> dict[str, Any]:
    """A Deployment of cheap pods (the kubelet runs `sleep` as a process), at zero like any idle service."""
    labels = {"app": APP}
    return {
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {
            "replicas": 0, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"terminationGracePeriodSeconds": 1,
                                  "containers": [{"name": "main", "image": "none", "command": ["sleep", "3600"]}]}},
        },
    }


@pytest.fixture(scope="module")
def target(cluster: Cluster, keda: Keda, peer: Peer) -> Iterator[Target]:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    try:
        wait_for(lambda: core.read_namespaced_service_account("default", NAMESPACE), 30, "default ServiceAccount")
        apps = client.AppsV1Api(cluster.api)
        created = apps.create_namespaced_deployment(NAMESPACE, sleeper())
        config, errors = AutoscalerConfig.from_mapping({"scale-to-zero-grace-period": f"{GRACE_S}s"})
        assert not errors
        manifest = scaled_object(cluster.api.sanitize_for_serialization(created), peer.address, config).manifest
        custom = client.CustomObjectsApi(cluster.api)
        custom.create_namespaced_custom_object(KEDA_GROUP, KEDA_VERSION, NAMESPACE, "scaledobjects", manifest)
        scaling = Target(keda, peer, manifest, apps, custom, client.AutoscalingV2Api(cluster.api))
        wait_for(lambda: _ready_and_streaming(scaling), 90, "ScaledObject Ready with its HPA and an open stream")
        yield scaling
    finally:
        core.delete_namespace(NAMESPACE)


def _ready_and_streaming(target: Target) -> bool:
    scaled = target.custom.get_namespaced_custom_object(KEDA_GROUP, KEDA_VERSION, NAMESPACE, "scaledobjects", APP)
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in scaled.get("status", {}).get("conditions", []))
    return ready and bool(target.hpa()) and target.peer.scaler.calls["StreamIsActive"] > 0


# --- observing replicas --------------------------------------------------------------------------------------

def settle(target: Target, desired: int, ceiling: int, what: str) -> None:
    """Wait until the Deployment's spec.replicas equals `desired` (polled every 0.1 s), failing if it ever
    exceeds `ceiling` or does not get there within SETTLE_TIMEOUT_S; then until its pods are ready; print
    how long each took."""
    started = time.monotonic()
    while (spec := target.replicas()[0]) != desired:
        assert spec <= ceiling, f"{what}: {spec} replicas, above {ceiling}\n{target.diagnose()}"
        assert time.monotonic() - started < SETTLE_TIMEOUT_S, (
            f"{what}: still {spec} replicas after {SETTLE_TIMEOUT_S}s, not {desired}\n{target.diagnose()}")
        time.sleep(0.1)
    scaled_s = time.monotonic() - started
    wait_for(lambda: target.replicas()[1:] == (desired, desired), SETTLE_TIMEOUT_S, f"{what}: {desired} pods ready",
             interval_s=0.1)
    print(f"\nkeda: {what}: replicas set in {scaled_s:.1f} s, {desired} pods ready in "
          f"{time.monotonic() - started:.1f} s")


def hold(target: Target, expected: int, duration_s: float, what: str) -> None:
    """spec.replicas stays exactly `expected` for duration_s, checked every 0.5 s."""
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        spec = target.replicas()[0]
        assert spec == expected, f"{what}: moved to {spec} replicas, not staying at {expected}\n{target.diagnose()}"
        time.sleep(0.5)
    print(f"keda: {what}: stayed at {expected} for {duration_s:.0f} s")


# --- the HPA's tolerance ------------------------------------------------------------------------------------

def tolerance(manifest: dict[str, Any], direction: str) -> Decimal:
    """The HPA tolerance a ScaledObject sets for "scaleUp" or "scaleDown" (a Quantity), else the default."""
    from kubernetes.utils import parse_quantity

    behavior = manifest["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    value = behavior.get(direction, {}).get("tolerance")
    return HPA_DEFAULT_TOLERANCE if value is None else parse_quantity(value)


def hpa_moves(current: int, desired: int, up: Decimal, down: Decimal) -> bool:
    """Whether the HPA moves `current` pods to `desired` when the AverageValue metric (target 1) reads
    `desired`: it keeps the count while the usage ratio desired/current lies within [1 - down, 1 + up], bounds
    included (the HPA's tolerance rule)."""
    ratio = Decimal(desired) / Decimal(current)
    return not (1 - down <= ratio <= 1 + up)


def hpa_reads(target: Target, average_value: str) -> bool:
    """The HPA's last sync read the external metric as this per-pod average (e.g. "1100m" = 11 over 10)."""
    metrics = target.hpa().status.current_metrics or []
    return any(m.external and m.external.current.average_value == average_value for m in metrics)


# --- scenarios, in order ---------------------------------------------------------------------------------------

def test_activation_takes_zero_to_one(target: Target) -> None:
    assert target.replicas() == (0, 0, 0)
    target.peer.scaler.set(active=True, desired_pods=1)
    settle(target, 1, ceiling=1, what="(a) StreamIsActive true: 0 -> 1")


def test_hpa_follows_the_desired_count_and_stays(target: Target) -> None:
    target.peer.scaler.set(active=True, desired_pods=4)
    settle(target, 4, ceiling=4, what="(b) GetMetrics 4: 1 -> 4")
    hold(target, 4, HOLD_S, "(b) GetMetrics 4")


def test_inactive_takes_it_back_to_zero_after_the_grace_period(target: Target) -> None:
    """KEDA goes to zero only a cooldownPeriod (Knative's grace period) after its last "active": the margin
    that keeps a loaded service up while KEDA cannot reach its scaler (kapa/kube/scaledobject.py)."""
    cooldown_s = target.manifest["spec"]["cooldownPeriod"]
    assert cooldown_s == GRACE_S
    target.peer.scaler.set(active=False, desired_pods=0)
    wait_for(lambda: target.replicas()[0] == 0, SETTLE_TIMEOUT_S, f"(c) zero\n{target.diagnose()}", interval_s=0.1)
    zero_seen = datetime.now(timezone.utc)
    settle(target, 0, ceiling=4, what="(c) inactive, 0: 4 -> 0")
    # KEDA's record of its last "active" poll (whole seconds, rounded down). Zero is seen at most one 0.1 s
    # poll after KEDA wrote it, so a busy machine can only make this wait look longer, never shorter.
    scaled = target.custom.get_namespaced_custom_object(KEDA_GROUP, KEDA_VERSION, NAMESPACE, "scaledobjects", APP)
    last_active = datetime.fromisoformat(scaled["status"]["lastActiveTime"].replace("Z", "+00:00"))
    waited_s = (zero_seen - last_active).total_seconds()
    assert waited_s >= cooldown_s, f"(c) zero {waited_s:.1f} s after KEDA's lastActiveTime, cooldown {cooldown_s} s"
    print(f"keda: (c) zero {waited_s:.1f} s after KEDA's lastActiveTime (cooldownPeriod {cooldown_s} s)")
    hold(target, 0, 2 * DEFAULT_HPA_SYNC_PERIOD_S, "(c) inactive")


def test_one_more_at_ten_follows_the_tolerance_kapa_sets(target: Target) -> None:
    """At 10 pods a desired 11 is a usage ratio of 1.1: exactly at the default 10 % tolerance's bound, which
    the HPA counts as within, so it keeps 10 unless the ScaledObject sets a smaller scale-up tolerance."""
    scaler = target.peer.scaler
    scaler.set(active=True, desired_pods=10)
    settle(target, 10, ceiling=10, what="(d) GetMetrics 10: 0 -> 10")

    scaler.set(active=True, desired_pods=11)
    wait_for(lambda: hpa_reads(target, "1100m"), SETTLE_TIMEOUT_S, "the HPA reading 11 over 10 pods")
    up, down = tolerance(target.manifest, "scaleUp"), tolerance(target.manifest, "scaleDown")
    expected = 11 if hpa_moves(10, 11, up, down) else 10
    what = f"(d) GetMetrics 11 at 10 with Kapa's ScaledObject (tolerance up {up})"
    settle(target, expected, ceiling=11, what=what)
    hold(target, expected, 2 * DEFAULT_HPA_SYNC_PERIOD_S, what)
    status = target.hpa().status
    print(f"keda: {what}: the HPA read 1100m per pod at {status.current_replicas} pods and "
          f"wants {status.desired_replicas}")


def test_a_zero_tolerance_reaches_the_hpa_and_moves_one_pod_either_way(target: Target) -> None:
    """`behavior.scaleUp/scaleDown.tolerance` passes through KEDA to its HPA, and at 0 the HPA follows a
    change of one pod at 10 in both directions (11/10 and 10/11 are both within the default tolerance)."""
    exact = {"scaleUp": {"tolerance": "0"}, "scaleDown": {"tolerance": "0"}}
    target.custom.patch_namespaced_custom_object(
        KEDA_GROUP, KEDA_VERSION, NAMESPACE, "scaledobjects", APP,
        {"spec": {"advanced": {"horizontalPodAutoscalerConfig": {"behavior": exact}}}})
    wait_for(lambda: _hpa_tolerances(target) == ("0", "0"), SETTLE_TIMEOUT_S, "KEDA's HPA with tolerance 0")
    print(f"keda: the HPA KEDA made now has behavior tolerances (up, down) {_hpa_tolerances(target)}")
    settle(target, 11, ceiling=11, what="(d) tolerance 0, GetMetrics 11: 10 -> 11")
    hold(target, 11, 2 * DEFAULT_HPA_SYNC_PERIOD_S, "(d) tolerance 0, GetMetrics 11")
    target.peer.scaler.set(active=True, desired_pods=10)
    settle(target, 10, ceiling=11, what="(d) tolerance 0, GetMetrics 10: 11 -> 10")
    print(f"keda: external scaler calls {dict(target.peer.scaler.calls)}")


def _hpa_tolerances(target: Target) -> tuple[str | None, str | None]:
    behavior = target.hpa().spec.behavior
    return behavior.scale_up.tolerance, behavior.scale_down.tolerance
