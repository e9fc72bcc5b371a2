"""Kapa on a real control plane: helm install, sidecar injection, scale from zero through Envoy and the
activator, scale up under load, back to zero, and a clean uninstall.

The scenarios run in order and share one release (module-scoped), because each builds on the last; every
wait is bounded and fails with the cluster's state (pods, container logs, kubelet log) in the message.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import urllib3
import yaml

from kapa.core import contract
from kapa.kube import inject
from kapa.kube.inject import inject_document
from tests.k8s import network, workload
from tests.k8s.conftest import Cluster, Prometheus, wait_for
from tests.k8s.keda import Keda
from tests.k8s.workload import (
    apps_api, app_manifest, app_pods, core, get, load_result, namespace_manifest, pod_ready, sample_sum, scrape,
    start_load,
)
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
ACTIVATORS = 2
STEADY = "steady"
LIMITED = "limited"
CRUNCH = "crunch"
STEADY_BURST_CAPACITY = 10

# On the pod template, as Knative has them on a revision: the webhook sees only the pod, the scaler reads
# both (the template's win).
SAMPLE_MANIFEST = namespace_manifest(APPS) + app_manifest(APPS, SAMPLE, {
    "autoscaling.knative.dev/target": str(TARGET),
    "autoscaling.knative.dev/target-utilization-percentage": "100",
    "autoscaling.knative.dev/window": "6s",
    # Malformed on purpose: the default is used and the scaler reports it as an Event on the Deployment.
    "autoscaling.knative.dev/panic-threshold-percentage": "lots",
    contract.ANNOTATION_TIMEOUT_SECONDS: "10",
})


def release_pods(cluster: Cluster) -> list[Any]:
    return workload.release_pods(cluster, RELEASE, NAMESPACE)


def component_pod(cluster: Cluster, component: str) -> Any:
    return workload.component_pod(cluster, RELEASE, NAMESPACE, component)


def sample_pods(cluster: Cluster) -> list[Any]:
    return app_pods(cluster, APPS, SAMPLE)


def replicas(cluster: Cluster, name: str = SAMPLE) -> int:
    return workload.replicas(cluster, APPS, name)


def envoy_url(cluster: Cluster) -> str:
    return workload.envoy_url(cluster, RELEASE, NAMESPACE)


def routes(cluster: Cluster) -> dict[str, Any]:
    """The gateway's routing state (in the scaler's process), with what each Envoy ACKed."""
    scaler = component_pod(cluster, "scaler")
    url = f"http://{scaler.status.pod_ip}:{contract.SCALER_HTTP_PORT}/v1/routes"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def route(cluster: Cluster, name: str) -> dict[str, Any] | None:
    return next((item for item in routes(cluster)["services"] if item["name"] == name), None)


def target(cluster: Cluster, name: str) -> str | None:
    """Where Envoy sends the service's requests now: "pods", "activator", or None (not routed)."""
    found = route(cluster, name)
    return found["target"] if found else None


def activator_requests(cluster: Cluster, service: str) -> list[float]:
    """Requests each activator replica answered for `service` (its own counter, read from every replica)."""
    return [sample_sum(scrape(pod.status.pod_ip, contract.ACTIVATOR_ADMIN_PORT), contract.REQUESTS,
                       **{contract.LABEL_SERVICE: service})
            for pod in workload.component_pods(cluster, RELEASE, NAMESPACE, "activator")]


def queue_proxy_total(cluster: Cluster, service: str, name: str) -> float:
    """A queue-proxy counter summed over the service's running pods."""
    return sum(sample_sum(scrape(pod.status.pod_ip, contract.QUEUE_METRICS_PORT), name)
               for pod in app_pods(cluster, APPS, service) if pod.status.pod_ip and pod_ready(pod))


@pytest.fixture(scope="module")
def release(cluster: Cluster, prometheus: Prometheus) -> Iterator[Cluster]:
    """`helm install` of charts/kapa with the direct actuator and two activators, then Prometheus fed the
    chart's scrape jobs. No list of services: the enrolled Deployments are the catalog."""
    values = {
        "actuator": "direct",
        # Shortened (default 30 s) so the scale-to-zero scenarios take seconds.
        "autoscaler": {"scale-to-zero-grace-period": f"{GRACE_S}s"},
        "prometheus": {"url": prometheus.url},
        "activator": {"autoscaling": {"enabled": False, "minReplicas": ACTIVATORS}},
    }
    print(f"helm install --wait: {workload.install(cluster, prometheus, RELEASE, NAMESPACE, values):.1f} s")
    try:
        yield cluster
    finally:
        try:
            core(cluster).delete_namespace(APPS)
        except Exception:  # noqa: BLE001 - absent when an earlier scenario failed before creating it
            pass


def test_helm_install_every_pod_ready(release: Cluster) -> None:
    pods = release_pods(release)
    components = [pod.metadata.labels.get("app.kubernetes.io/component") for pod in pods]
    assert {"scaler", "activator", "envoy", "webhook"} <= set(components), release.diagnose(NAMESPACE)
    assert components.count("activator") == ACTIVATORS
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
    # At zero Envoy sends the service's requests to the activators, which hold them.
    at_zero = route(release, SAMPLE)
    assert at_zero is not None and (at_zero["mode"], at_zero["target"]) == ("proxy", "activator"), at_zero
    assert at_zero["hosts"] == [f"{SAMPLE}.{APPS}", f"{SAMPLE}.{APPS}.svc", f"{SAMPLE}.{APPS}.svc.cluster.local"]
    url = envoy_url(release)
    pokes, held_before = scaler_pokes(release), sum(activator_requests(release, SAMPLE))
    started = time.monotonic()
    status, body = get(f"{url}?sleep={SLEEP_MS}", f"{SAMPLE}.{APPS}", 90)
    cold_start = time.monotonic() - started
    assert status == 200, f"{status} {body[:300]!r}\n{release.diagnose(APPS)}"
    assert f"slept {SLEEP_MS} ms".encode() in body
    assert replicas(release) >= 1
    # The path, not just the answer: an activator held and forwarded it, and poked the scaler to wake it.
    assert sum(activator_requests(release, SAMPLE)) > held_before, "the request did not go through an activator"
    assert scaler_pokes(release) > pokes, "woken without the activator's poke (a metrics scrape, much later)"
    print(f"cold start through Envoy and the activator: {cold_start:.1f} s")


def test_scales_to_five_under_load_then_back_to_zero(release: Cluster) -> None:
    """Every count the API server recorded (a watch, not polls): never above five, five held while the load
    lasts once reached, no failed request, then zero."""
    load_step_to_five_and_back_to_zero(release, "direct", ready_within_s=75)


def enrolled_by_the_deployment_alone(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifests injected as GitOps users do (`kapa inject`), the Deployment enrolled by its own annotation
    only: its pod template carries no kapa.dev/enabled, so unenrolling it later changes no pod (no rollout)."""
    injected = [inject_document(document).document for document in documents]
    for document in injected:
        if document["kind"] == "Deployment":
            del document["spec"]["template"]["metadata"]["labels"][contract.ANNOTATION_ENABLED]
    return injected


def test_a_deployment_enrolled_while_running_is_routed_within_seconds(release: Cluster) -> None:
    """No restart and no values change: the catalog's watch routes it, through the activator until it has
    pods and is decided about. Two pods of target 10 and a burst capacity of 10: up to 10 concurrent
    requests leave excess burst capacity >= 0, so its pods take them straight from Envoy."""
    manifest = app_manifest(
        APPS, STEADY,
        {"autoscaling.knative.dev/target": str(TARGET),
         "autoscaling.knative.dev/target-utilization-percentage": "100",
         "autoscaling.knative.dev/min-scale": "2",
         contract.ANNOTATION_HOSTS: "steady.example.com"},
        # On the Deployment, so that changing it is no rollout (the next scenarios change it).
        {"autoscaling.knative.dev/target-burst-capacity": str(STEADY_BURST_CAPACITY)},
        replicas=2,
    )
    created = time.monotonic()
    release.apply(yaml.safe_dump_all(enrolled_by_the_deployment_alone(yaml.safe_load_all(manifest))))
    wait_for(lambda: route(release, STEADY), 20, f"{STEADY} routed")
    routed = time.monotonic() - created
    status, body = get(f"{envoy_url(release)}?sleep=1", "steady.example.com", 60)
    answered = time.monotonic() - created
    assert status == 200, f"{status} {body[:300]!r}\n{release.diagnose(APPS)}"
    print(f"enrolled -> routed: {routed:.1f} s; -> first 200 through Envoy (pod start included): {answered:.1f} s")


def set_burst_capacity(cluster: Cluster, value: str) -> None:
    patch = {"metadata": {"annotations": {"autoscaling.knative.dev/target-burst-capacity": value}}}
    apps_api(cluster).patch_namespaced_deployment(STEADY, APPS, patch)


def test_steady_load_with_capacity_is_served_by_the_pods_not_the_activator(release: Cluster) -> None:
    """Serve mode: the activators see none of the load. Then the same load with the annotation changed to
    -1 (activator always in path, no restart): proxy mode. Latency of both paths printed side by side."""
    wait_for(lambda: target(release, STEADY) == "pods", 60, f"{STEADY} in serve mode\n{release.diagnose(APPS)}")
    before_activators = activator_requests(release, STEADY)
    before_pods = queue_proxy_total(release, STEADY, contract.REQUESTS)
    # 5 concurrent: excess burst capacity 2 x 10 - 10 - 5 = 5 >= 0 throughout.
    served = load_result(start_load(envoy_url(release), f"{STEADY}.{APPS}", 5, "10s", SLEEP_MS))
    assert served["errors"] == 0 and set(served["status_counts"]) == {"200"}, served
    assert activator_requests(release, STEADY) == before_activators, "the activators saw none of it"
    assert queue_proxy_total(release, STEADY, contract.REQUESTS) - before_pods >= served["responses"]
    assert target(release, STEADY) == "pods"

    set_burst_capacity(release, "-1")
    started = time.monotonic()
    wait_for(lambda: target(release, STEADY) == "activator", 20, f"{STEADY} re-configured to proxy")
    reconfigured = time.monotonic() - started
    before_activators = activator_requests(release, STEADY)
    proxied = load_result(start_load(envoy_url(release), f"{STEADY}.{APPS}", 5, "10s", SLEEP_MS))
    assert proxied["errors"] == 0 and set(proxied["status_counts"]) == {"200"}, proxied
    assert sum(activator_requests(release, STEADY)) - sum(before_activators) >= proxied["responses"]
    set_burst_capacity(release, str(STEADY_BURST_CAPACITY))
    wait_for(lambda: target(release, STEADY) == "pods", 20, f"{STEADY} back to serve")
    print(f"annotation changed -> route moved: {reconfigured:.1f} s")
    for name, result in (("serve", served), ("proxy", proxied)):
        latency = result["latency_ms"]
        print(f"{name} path, -c 5 sleep={SLEEP_MS} ms: p50 {latency['p50'] - SLEEP_MS:.2f} ms, "
              f"p99 {latency['p99'] - SLEEP_MS:.2f} ms above the app's sleep, {result['responses_per_s']} req/s")


def test_a_burst_beyond_capacity_goes_through_the_activator_and_back_with_no_failed_request(release: Cluster) -> None:
    """A steady 5 for 45 s, and 12 s of 40 more in its middle: serve -> proxy (excess burst capacity
    2 x 10 - 10 - 45 < 0) -> serve again once new pods hold it or the burst is over. Every response of both
    loads is counted: none may fail."""
    url = envoy_url(release)
    before = sum(activator_requests(release, STEADY))
    base = start_load(url, f"{STEADY}.{APPS}", 5, "45s", SLEEP_MS)
    burst: subprocess.Popen[str] | None = None
    targets: list[tuple[float, str | None]] = []
    ack_delays: list[float] = []
    started = time.monotonic()
    try:
        while base.poll() is None:
            elapsed = time.monotonic() - started
            if burst is None and elapsed >= 5:
                burst = start_load(url, f"{STEADY}.{APPS}", 40, "12s", SLEEP_MS)
            state = routes(release)
            now_target = next((item["target"] for item in state["services"] if item["name"] == STEADY), None)
            if not targets or targets[-1][1] != now_target:
                targets.append((round(elapsed, 1), now_target))
                for envoy in state["envoys"].values():
                    route_status = envoy.get("type.googleapis.com/envoy.config.route.v3.RouteConfiguration") or {}
                    if route_status.get("ack_delay_s") is not None:
                        ack_delays.append(route_status["ack_delay_s"])
            time.sleep(0.25)
        results = [load_result(base)] + ([load_result(burst)] if burst else [])
    finally:
        for load in (base, burst):
            if load is not None and load.poll() is None:
                load.kill()
    print(f"route targets over time: {targets}\nroute ACK delays (s): {[round(d, 4) for d in ack_delays]}")
    for result in results:  # ("unfinished": in flight when the load's own duration ran out, cancelled by it)
        assert result["errors"] == 0 and set(result["status_counts"]) == {"200"}, result
    sequence = [where for _, where in targets]
    assert sequence[0] == "pods" and "activator" in sequence, sequence
    assert sequence[-1] == "pods", f"back to the pods after the burst: {sequence}"
    assert sum(activator_requests(release, STEADY)) > before, "the burst went through the activators"


def test_an_unlabelled_deployment_stops_being_routed(release: Cluster) -> None:
    patch = {"metadata": {"annotations": {contract.ANNOTATION_ENABLED: None}}}
    apps_api(release).patch_namespaced_deployment(STEADY, APPS, patch)
    started = time.monotonic()
    wait_for(lambda: route(release, STEADY) is None, 20, f"{STEADY} unrouted")
    unrouted = time.monotonic() - started
    status, _ = wait_for(lambda: (lambda answer: answer if answer[0] == 404 else None)(
        get(envoy_url(release), f"{STEADY}.{APPS}", 10)), 20, "Envoy's 404 for the unrouted host")
    assert status == 404
    print(f"unlabelled -> unrouted: {unrouted:.1f} s")
    apps_api(release).delete_namespaced_deployment(STEADY, APPS)


def test_two_activators_never_put_more_than_the_pods_limit_on_it(release: Cluster) -> None:
    """containerConcurrency 2, one pod (max-scale 1), two activators, 12 clients: each activator may have
    one request on the pod, so the queue-proxy never has to queue one (its counter of queued requests is
    exact, not sampled), while both activators forward."""
    release.apply(app_manifest(APPS, LIMITED, {
        "autoscaling.knative.dev/min-scale": "1",
        "autoscaling.knative.dev/max-scale": "1",
        contract.ANNOTATION_CONTAINER_CONCURRENCY: "2",
    }))
    wait_for(lambda: route(release, LIMITED) and queue_proxy_total(release, LIMITED, contract.QUEUED_REQUESTS) == 0
             and any(pod_ready(p) for p in core(release).list_namespaced_pod(APPS, label_selector=f"app={LIMITED}").items),
             90, f"{LIMITED} ready\n{release.diagnose(APPS)}")
    result = load_result(start_load(envoy_url(release), f"{LIMITED}.{APPS}", 12, "10s", 200))
    assert result["errors"] == 0 and set(result["status_counts"]) == {"200"}, result
    forwarded = activator_requests(release, LIMITED)
    assert len(forwarded) == ACTIVATORS and all(count > 0 for count in forwarded), forwarded
    assert queue_proxy_total(release, LIMITED, contract.QUEUED_REQUESTS) == 0
    assert queue_proxy_total(release, LIMITED, contract.REQUESTS) >= result["responses"]
    print(f"requests per activator: {forwarded}; at the pod: {result['responses']}, none queued")


# --- the same install switched to actuator keda: the real KEDA and the real HPA controller -------------------

class ReplicaHistory:
    """Every spec.replicas the API server records for one Deployment, from a watch (complete, not sampled)."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        from kubernetes import watch

        self.values: list[tuple[float, int]] = [(time.monotonic(), replicas(cluster, name))]
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._follow, args=(cluster, name), daemon=True)
        self._thread.start()

    def _follow(self, cluster: Cluster, name: str) -> None:
        stream = self._watch.stream(apps_api(cluster).list_namespaced_deployment, APPS,
                                    field_selector=f"metadata.name={name}", timeout_seconds=900)
        try:
            for event in stream:
                count = event["object"].spec.replicas
                if count != self.values[-1][1]:
                    self.values.append((time.monotonic(), count))
        except urllib3.exceptions.ProtocolError:
            return  # the API server went away with the cluster, after the test read what it needed

    def since(self, started: float) -> list[int]:
        """The counts in force from `started` on (the one current then included)."""
        before = [count for at, count in self.values if at <= started][-1:]
        return before + [count for at, count in self.values if at > started]

    def stop(self) -> None:
        self._watch.stop()


def load_step_to_five_and_back_to_zero(release: Cluster, actuator: str, ready_within_s: float) -> None:
    """A load wanting five pods for 40 s, judged on every count the API server recorded: five ready within
    `ready_within_s`, never above five, five held while the load lasts, no failed request, then zero."""
    history = ReplicaHistory(release, SAMPLE)
    expected = LOAD_CONCURRENCY // TARGET
    try:
        started = time.monotonic()
        load = start_load(envoy_url(release), f"{SAMPLE}.{APPS}", LOAD_CONCURRENCY, "40s", SLEEP_MS)
        reached = wait_for(lambda: sum(pod_ready(p) for p in sample_pods(release)) >= expected and time.monotonic(),
                           ready_within_s, f"{expected} ready pods\n{release.diagnose(APPS)}")
        result = load_result(load)
        ended = time.monotonic()
        under_load = history.since(started)
        assert max(under_load) == expected, f"never above {expected}: {under_load}\n{release.diagnose(APPS)}"
        held = [count for at, count in history.values if reached <= at <= ended]
        assert set(held) <= {expected}, f"held at {expected} while the load lasted: {under_load}"
        assert result["errors"] == 0 and set(result["status_counts"]) == {"200"}, result
        # Idle again: back to zero once the stable window has no traffic and the grace period has passed.
        wait_for(lambda: replicas(release) == 0, 150, f"{SAMPLE} back to 0\n{release.diagnose(NAMESPACE)}")
        print(f"{actuator}: load step -> {expected} ready: {reached - started:.1f} s; load end -> 0: "
              f"{time.monotonic() - ended:.1f} s; counts written: {history.since(started)}")
    finally:
        history.stop()


def scaler_pokes(cluster: Cluster) -> float:
    scaler = component_pod(cluster, "scaler")
    return sample_sum(scrape(scaler.status.pod_ip, contract.SCALER_HTTP_PORT), contract.SCALER_POKES)


def scaled_object_ready(cluster: Cluster, name: str) -> bool:
    from kubernetes import client

    found = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        "keda.sh", "v1alpha1", APPS, "scaledobjects", name)
    conditions = {c["type"]: c["status"] for c in (found.get("status") or {}).get("conditions") or []}
    return conditions.get("Ready") == "True"


def test_switching_to_actuator_keda_gives_each_enrolled_deployment_a_working_scaled_object(
    release: Cluster, keda: Keda,
) -> None:
    values_file = release.plane.dir / f"values-{RELEASE}.yaml"
    values = yaml.safe_load(values_file.read_text())
    values_file.write_text(yaml.safe_dump({**values, "actuator": "keda"}))
    release.helm("upgrade", RELEASE, str(REPO / "charts" / "kapa"), "--namespace", NAMESPACE,
                 "--values", str(values_file), "--wait", "--timeout", "4m", timeout_s=300)
    for name in (SAMPLE, LIMITED):
        wait_for(lambda: scaled_object_ready(release, name), 90, f"ScaledObject {name} Ready\n{keda.logs()}")
    from kubernetes import client

    autoscaling = client.AutoscalingV2Api(release.api)
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(f"keda-hpa-{SAMPLE}", APPS)
    assert hpa.spec.behavior.scale_up.stabilization_window_seconds == 0
    # min-scale 1 (and max-scale 1) of the limited service: KEDA's HPA keeps exactly one pod, never zero.
    limited = autoscaling.read_namespaced_horizontal_pod_autoscaler(f"keda-hpa-{LIMITED}", APPS)
    assert (limited.spec.min_replicas, limited.spec.max_replicas) == (1, 1)
    assert replicas(release, LIMITED) == 1


def test_keda_wakes_the_service_on_its_first_request_through_the_activators_poke(release: Cluster) -> None:
    wait_for(lambda: replicas(release) == 0 and not sample_pods(release), 150, f"{SAMPLE} at 0")
    pokes = scaler_pokes(release)
    started = time.monotonic()
    status, body = get(f"{envoy_url(release)}?sleep={SLEEP_MS}", f"{SAMPLE}.{APPS}", 90)
    cold_start = time.monotonic() - started
    assert status == 200, f"{status} {body[:300]!r}\n{release.diagnose(APPS)}"
    assert scaler_pokes(release) > pokes, "woken by the activator's poke, not by a metrics scrape"
    print(f"keda: cold start through Envoy, the activator's poke, StreamIsActive and KEDA: {cold_start:.1f} s")


def test_keda_follows_the_scaler_up_under_load_and_back_to_zero(release: Cluster) -> None:
    load_step_to_five_and_back_to_zero(release, "keda", ready_within_s=60)


def test_keda_honours_max_scale(release: Cluster) -> None:
    """max-scale 3 on the Deployment (no rollout): the ScaledObject's maxReplicaCount and the scaler both
    keep it at 3 under a load that wants 5."""
    apps_api(release).patch_namespaced_deployment(SAMPLE, APPS, {"metadata": {"annotations": {
        "autoscaling.knative.dev/max-scale": "3"}}})
    from kubernetes import client

    custom = client.CustomObjectsApi(release.api)
    wait_for(lambda: custom.get_namespaced_custom_object("keda.sh", "v1alpha1", APPS, "scaledobjects", SAMPLE)
             ["spec"]["maxReplicaCount"] == 3, 30, "maxReplicaCount 3")
    history = ReplicaHistory(release, SAMPLE)
    try:
        started = time.monotonic()
        result = load_result(start_load(envoy_url(release), f"{SAMPLE}.{APPS}", LOAD_CONCURRENCY, "25s", SLEEP_MS))
        counts = history.since(started)
        assert result["errors"] == 0, result
        assert max(counts) == 3, counts
    finally:
        history.stop()
        apps_api(release).patch_namespaced_deployment(SAMPLE, APPS, {"metadata": {"annotations": {
            "autoscaling.knative.dev/max-scale": None}}})


def test_killing_the_scaler_mid_load_holds_the_replicas(release: Cluster) -> None:
    """The scaler's pod deleted under load: Envoy keeps its routes, KEDA and the HPA get no answer and keep
    the count; nothing goes to zero, no request fails; the new scaler picks up where the old one was.

    KEDA can read a scaler it cannot reach as idle (kapa/kube/scaledobject.py), so what keeps a loaded service
    up is that KEDA waits the grace period (its cooldownPeriod) after its last "active". Here KEDA keeps
    dialling the deleted pod's address for 20-30 s (this cluster's DNS is a hosts file and gRPC re-resolves
    at most every 30 s; a ClusterIP moves at once), longer than the 10 s grace of these scenarios, so the
    service gets a 60 s retention period for the scenario, as a service that must ride out that long would.
    """
    retention = contract.knative_annotation("scale-to-zero-pod-retention-period")
    apps_api(release).patch_namespaced_deployment(SAMPLE, APPS, {"metadata": {"annotations": {retention: "60s"}}})
    from kubernetes import client

    custom = client.CustomObjectsApi(release.api)
    wait_for(lambda: custom.get_namespaced_custom_object("keda.sh", "v1alpha1", APPS, "scaledobjects", SAMPLE)
             ["spec"]["cooldownPeriod"] == 60, 30, "cooldownPeriod 60")
    history = ReplicaHistory(release, SAMPLE)
    expected = LOAD_CONCURRENCY // TARGET
    try:
        load = start_load(envoy_url(release), f"{SAMPLE}.{APPS}", LOAD_CONCURRENCY, "60s", SLEEP_MS)
        wait_for(lambda: replicas(release) == expected, 60, f"{expected} under load")
        killed = time.monotonic()
        old = component_pod(release, "scaler")
        core(release).delete_namespaced_pod(old.metadata.name, NAMESPACE, grace_period_seconds=0)
        wait_for(lambda: component_pod(release, "scaler").metadata.name != old.metadata.name, 90,
                 f"a new scaler Ready\n{release.diagnose(NAMESPACE)}")
        back = time.monotonic() - killed
        result = load_result(load)
        counts = history.since(killed)
        assert min(counts) >= 1, f"nothing went to zero: {counts}"
        assert result["errors"] == 0 and set(result["status_counts"]) == {"200"}, result
        print(f"keda: scaler killed under load; new scaler Ready in {back:.1f} s; counts meanwhile: {counts}")
    finally:
        history.stop()
        apps_api(release).patch_namespaced_deployment(SAMPLE, APPS, {"metadata": {"annotations": {retention: None}}})


def scaler_decisions(pod: Any, name: str = SAMPLE) -> dict[float, tuple[int, bool]]:
    """One scaler replica's tick decisions for a service (pokes left out: each replica sees only its own),
    by tick time: ticks fall on wall-clock multiples of the tick interval, the same on every replica."""
    url = f"http://{pod.status.pod_ip}:{contract.SCALER_HTTP_PORT}/v1/explain/{APPS}/{name}"
    with urllib.request.urlopen(url, timeout=10) as response:
        records = json.load(response)["decisions"]
    return {r["at"]: (r["desired_pods"], r["panic_mode"]) for r in records if not r["poked"]}


def envoy_follows_the_only_scaler(cluster: Cluster) -> bool:
    """One scaler pod left (none terminating: a scaler on its way out may still hold Envoy's xDS stream), and
    Envoy has ACKed every resource version it serves, so the next tests see its routes."""
    pods = [pod for pod in release_pods(cluster)
            if pod.metadata.labels.get("app.kubernetes.io/component") == "scaler"]
    if len(pods) != 1 or not pod_ready(pods[0]):
        return False
    state = routes(cluster)
    return bool(state["envoys"]) and all(
        types.get(type_url, {}).get("acked_version") == version
        for types in state["envoys"].values() for type_url, version in state["versions"].items())


def test_with_two_scalers_they_agree_and_killing_one_mid_load_changes_nothing(release: Cluster) -> None:
    """Two scaler replicas (KEDA and Envoy each talk to one through the Service): under load they decide
    the same, tick by tick; the one both talk to is killed and nothing a client sees changes: the replica
    count holds, no request fails. The retention period covers KEDA's re-dial, as in the test above."""
    from kubernetes import client

    retention = contract.knative_annotation("scale-to-zero-pod-retention-period")
    apps_api(release).patch_namespaced_deployment(SAMPLE, APPS, {"metadata": {"annotations": {retention: "60s"}}})
    (scaler_deployment,) = [d.metadata.name for d in apps_api(release).list_namespaced_deployment(
        NAMESPACE, label_selector="app.kubernetes.io/component=scaler").items]
    apps_api(release).patch_namespaced_deployment_scale(scaler_deployment, NAMESPACE, {"spec": {"replicas": 2}})
    custom = client.CustomObjectsApi(release.api)
    history: ReplicaHistory | None = None
    expected = LOAD_CONCURRENCY // TARGET
    try:
        wait_for(lambda: custom.get_namespaced_custom_object("keda.sh", "v1alpha1", APPS, "scaledobjects", SAMPLE)
                 ["spec"]["cooldownPeriod"] == 60, 30, "cooldownPeriod 60")
        wait_for(lambda: len(workload.component_pods(release, RELEASE, NAMESPACE, "scaler")) == 2, 90,
                 f"two scalers ready\n{release.diagnose(NAMESPACE)}")
        load = start_load(envoy_url(release), f"{SAMPLE}.{APPS}", LOAD_CONCURRENCY, "70s", SLEEP_MS)
        wait_for(lambda: replicas(release) == expected, 60, f"{expected} under load")
        time.sleep(10)  # ticks of the loaded service on both replicas
        scalers = sorted(workload.component_pods(release, RELEASE, NAMESPACE, "scaler"),
                         key=lambda pod: ipaddress.ip_address(pod.status.pod_ip))
        first, second = (scaler_decisions(pod) for pod in scalers)
        common = sorted(set(first) & set(second))
        assert len(common) >= 5, (first, second)
        assert [first[at] for at in common] == [second[at] for at in common]
        assert expected in {first[at][0] for at in common}

        # The lowest address is the one this cluster's DNS gives the Service's name: KEDA's and Envoy's.
        history = ReplicaHistory(release, SAMPLE)
        killed = time.monotonic()
        core(release).delete_namespaced_pod(scalers[0].metadata.name, NAMESPACE, grace_period_seconds=0)
        result = load_result(load)
        counts = history.since(killed)
        survivor = scaler_decisions(scalers[1])
        after = [survivor[at][0] for at in sorted(survivor) if at > common[-1]]
        print(f"two scalers: {len(common)} common ticks identical; one killed under load; replica counts "
              f"meanwhile {counts}; the survivor's decisions after it {after}")
        assert counts == [expected], counts
        assert result["errors"] == 0 and set(result["status_counts"]) == {"200"}, result
        assert after and set(after) == {expected}, after
    finally:
        if history is not None:
            history.stop()
        apps_api(release).patch_namespaced_deployment_scale(scaler_deployment, NAMESPACE, {"spec": {"replicas": 1}})
        apps_api(release).patch_namespaced_deployment(SAMPLE, APPS, {"metadata": {"annotations": {retention: None}}})
        wait_for(lambda: envoy_follows_the_only_scaler(release), 120,
                 f"one scaler left, its routes ACKed by Envoy\n{release.diagnose(NAMESPACE)}")


def test_a_deployment_of_knatives_hpa_class_is_scaled_by_the_hpa_on_cpu_and_served_by_its_pods(
    release: Cluster,
) -> None:
    """KEDA's cpu trigger instead of Kapa's: its HPA scales on the pods' cpu (this cluster has no
    metrics-server, so it never acts here; the objects are what is checked). Kapa routes it to its pod and
    explains who scales it."""
    release.apply(app_manifest(APPS, CRUNCH, {
        "autoscaling.knative.dev/class": contract.CLASS_HPA,
        "autoscaling.knative.dev/metric": "cpu",
        "autoscaling.knative.dev/target": "60",
    }))
    wait_for(lambda: scaled_object_ready(release, CRUNCH), 90, f"ScaledObject {CRUNCH} Ready")
    from kubernetes import client

    hpa = client.AutoscalingV2Api(release.api).read_namespaced_horizontal_pod_autoscaler(f"keda-hpa-{CRUNCH}", APPS)
    (metric,) = hpa.spec.metrics
    assert (metric.type, metric.resource.name, metric.resource.target.average_utilization) == ("Resource", "cpu", 60)
    assert hpa.spec.min_replicas == 1
    wait_for(lambda: target(release, CRUNCH) == "pods", 60, f"{CRUNCH} served by its pod\n{release.diagnose(APPS)}")
    assert get(f"{envoy_url(release)}?sleep=1", f"{CRUNCH}.{APPS}", 30)[0] == 200
    scaler = component_pod(release, "scaler")
    explain = f"http://{scaler.status.pod_ip}:{contract.SCALER_HTTP_PORT}/v1/explain/{APPS}/{CRUNCH}"
    with urllib.request.urlopen(explain, timeout=5) as response:
        latest = json.load(response)["decisions"][0]
    assert latest["delegated"] and "Kubernetes HPA" in latest["explanation"][0], latest


def test_prometheus_found_the_pods_through_kubernetes_discovery(release: Cluster, prometheus: Prometheus) -> None:
    """The scale-up above came from these series: queue-proxies scraped at their pod IPs, found by role pod."""
    query = urllib.parse.urlencode({"query": f'{contract.REQUESTS}{{namespace="{APPS}"}}'})
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/query?{query}", timeout=10) as response:
        series = json.load(response)["data"]["result"]
    pods = {item["metric"].get("pod") for item in series}
    assert len(pods) >= LOAD_CONCURRENCY // TARGET, series
    addresses = {item["metric"]["instance"].rsplit(":", 1)[0] for item in series}
    assert all(ipaddress.ip_address(address) in network.POD_CIDR for address in addresses), addresses


def test_helm_uninstall_hands_the_apps_back_and_leaves_nothing_behind(release: Cluster) -> None:
    """`helm uninstall` first runs the chart's detach hook (kapa.kube.detach); then, in the apps' namespace,
    before anything of the user's is deleted: no ScaledObject or HPA of Kapa's is left, the Deployment
    Kapa had taken to zero serves again (1 replica), and its Service targets the app's port with a ready
    endpoint there. Then the apps go, and nothing of the release is left anywhere in the cluster. (The
    Events Kapa recorded stay until the API server's event TTL, as every controller's do.)"""
    from kubernetes import client

    custom = client.CustomObjectsApi(release.api)
    autoscaling = client.AutoscalingV2Api(release.api)
    managed_by = "app.kubernetes.io/managed-by=kapa"

    def scaled_objects() -> list[str]:
        found = custom.list_namespaced_custom_object("keda.sh", "v1alpha1", APPS, "scaledobjects")["items"]
        return [item["metadata"]["name"] for item in found]

    wait_for(lambda: replicas(release) == 0, 120, f"{SAMPLE} idle at zero before the uninstall")
    assert SAMPLE in scaled_objects()  # the chart's default actuator, KEDA, scales it
    service = core(release).read_namespaced_service(SAMPLE, APPS)
    assert [port.target_port for port in service.spec.ports] == [contract.QUEUE_SERVING_PORT]  # the queue-proxy
    release.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "3m", timeout_s=240)

    assert scaled_objects() == []
    assert autoscaling.list_namespaced_horizontal_pod_autoscaler(APPS, label_selector=managed_by).items == []
    app_port = inject.app_port(apps_api(release).api_client.sanitize_for_serialization(
        apps_api(release).read_namespaced_deployment(SAMPLE, APPS)))
    service = core(release).read_namespaced_service(SAMPLE, APPS)
    assert [port.target_port for port in service.spec.ports] == [app_port]
    assert apps_api(release).read_namespaced_deployment(SAMPLE, APPS).spec.replicas == 1
    discovery = client.DiscoveryV1Api(release.api)

    def ready_at_app_port() -> bool:
        slices = discovery.list_namespaced_endpoint_slice(APPS, label_selector=f"kubernetes.io/service-name={SAMPLE}")
        return any(port.port == app_port for s in slices.items for port in s.ports or []) and any(
            endpoint.conditions.ready for s in slices.items for endpoint in s.endpoints or [])

    wait_for(ready_at_app_port, 120, f"{SAMPLE}'s Service ready at the app's port {app_port}\n{release.diagnose(APPS)}")

    # The apps go: their pods drain (each queue-proxy's quiet period) before the namespace is deleted, since
    # the namespace controller retries a namespace with content left with a growing back-off (177 s seen).
    deleted = time.monotonic()
    apps_api(release).delete_collection_namespaced_deployment(APPS)
    wait_for(lambda: not core(release).list_namespaced_pod(APPS).items, 120,
             f"the pods of the deleted Deployments gone\n{release.diagnose(APPS)}")
    print(f"Deployments' pods drained and gone in {time.monotonic() - deleted:.1f} s")
    core(release).delete_namespace(APPS)
    started = time.monotonic()
    try:
        wait_for(lambda: APPS not in {n.metadata.name for n in core(release).list_namespace().items}, 180,
                 f"namespace {APPS} deleted")
    except TimeoutError as error:
        status = core(release).read_namespace(APPS).status
        raise AssertionError(f"{error}\n{status}\n{release.diagnose(APPS)}") from None
    print(f"namespace {APPS} deleted in {time.monotonic() - started:.1f} s")
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
            ("Job", client.BatchV1Api(release.api).list_job_for_all_namespaces(label_selector=selector).items),
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
