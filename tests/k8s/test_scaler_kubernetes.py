"""scaler.kubernetes against the real API server: the catalog of enrolled Deployments (kapa.kube.deployments),
Events for bad annotations, ready pods from EndpointSlices, and the direct actuator's scale patches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from kapa.core import contract
from kapa.core.services import ServiceKey
from kapa.core.settings import AutoscalerConfig
from scaler.decision import Decision
from kapa.kube.deployments import DeploymentCatalog
from kapa.kube.scaledobject import KEDA_API_VERSION, scaled_object as scaled_object_manifest
from scaler.kubernetes import (
    AnnotationReporter,
    EndpointSliceReadyPods,
    ScaleActuator,
    ObjectActuator,
)
from tests.k8s.conftest import Cluster
from tests.k8s.keda import Keda

pytestmark = pytest.mark.timeout(120)

NAMESPACE = "scaler-edges"


async def eventually(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


def deployment(name: str, annotations: dict[str, str], replicas: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": "none", "command": ["true"]}]}},
        },
    }


def decision(desired: int) -> Decision:
    return Decision(desired_pods=desired, excess_burst_capacity=0, panic_mode=False, stale=False, mode="serve",
                    stable_value=None, panic_value=None, target=10.0, ready_pods=0, at_s=0.0, explanation=())


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Any:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    yield cluster
    core.delete_namespace(NAMESPACE)


async def test_catalog_events_and_direct_scale(namespace: Cluster) -> None:
    from kubernetes import client

    apps = client.AppsV1Api(namespace.api)
    core = client.CoreV1Api(namespace.api)
    enrolled = {contract.ANNOTATION_ENABLED: "true", "autoscaling.knative.dev/target": "ten"}
    apps.create_namespaced_deployment(NAMESPACE, deployment("enrolled", enrolled))
    apps.create_namespaced_deployment(NAMESPACE, deployment("plain", {}))

    catalog = DeploymentCatalog(namespace.api, NAMESPACE,
                                on_spec_change=AnnotationReporter(namespace.api, AutoscalerConfig.default()))
    await catalog.start()
    try:
        key = ServiceKey(NAMESPACE, "enrolled")
        assert await eventually(lambda: key in catalog.services())
        assert set(catalog.services()) == {key}, "only the enrolled Deployment is a service"
        assert catalog.services()[key].annotations["autoscaling.knative.dev/target"] == "ten"

        def warning() -> list[Any]:
            events = core.list_namespaced_event(NAMESPACE, field_selector="involvedObject.name=enrolled").items
            return [e for e in events if e.reason == contract.EVENT_REASON_INVALID_ANNOTATION]

        events = await eventually(warning)
        assert events and events[0].type == "Warning" and events[0].involved_object.kind == "Deployment"
        assert "autoscaling.knative.dev/target" in events[0].message

        actuator = ScaleActuator(namespace.api, catalog)
        await actuator.apply({key: decision(3)})
        assert apps.read_namespaced_deployment("enrolled", NAMESPACE).spec.replicas == 3
        assert await eventually(lambda: catalog.replicas(key) == 3)
        await actuator.apply({key: decision(0)})
        assert apps.read_namespaced_deployment("enrolled", NAMESPACE).spec.replicas == 0
        # A service the catalog does not enrol is never scaled.
        await actuator.apply({ServiceKey(NAMESPACE, "plain"): decision(2)})
        assert apps.read_namespaced_deployment("plain", NAMESPACE).spec.replicas == 0

        apps.delete_namespaced_deployment("enrolled", NAMESPACE)
        assert await eventually(lambda: key not in catalog.services())
    finally:
        catalog.close()


async def test_ready_pods_from_endpoint_slices(namespace: Cluster) -> None:
    from kubernetes import client

    discovery = client.DiscoveryV1Api(namespace.api)
    counter = EndpointSliceReadyPods(namespace.api, NAMESPACE)
    key = ServiceKey(NAMESPACE, "counted")
    assert counter.ready_pods(key) is None, "unknown before the first list"
    await counter.start()
    try:
        assert await eventually(lambda: counter.ready_pods(key) == 0)
        endpoints = [
            {"addresses": ["10.244.0.200"], "conditions": {"ready": True}},
            {"addresses": ["10.244.0.201"], "conditions": {"ready": True}},
            {"addresses": ["10.244.0.202"], "conditions": {"ready": False}},
            {"addresses": ["10.244.0.203"], "conditions": {"ready": False, "terminating": True}},
        ]
        discovery.create_namespaced_endpoint_slice(NAMESPACE, {
            "metadata": {"name": "counted-1", "labels": {"kubernetes.io/service-name": "counted"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": contract.QUEUE_SERVING_PORT, "protocol": "TCP"}],
            "endpoints": endpoints,
        })
        assert await eventually(lambda: counter.ready_pods(key) == 2)
        discovery.delete_namespaced_endpoint_slice("counted-1", NAMESPACE)
        assert await eventually(lambda: counter.ready_pods(key) == 0)
    finally:
        await counter.close()


async def test_keda_actuator_keeps_one_scaled_object_per_enrolled_deployment(namespace: Cluster, keda: Keda) -> None:
    """Against KEDA's own CRD (installed by the `keda` fixture), whose schema validates what Kapa writes."""
    from kubernetes import client

    custom = client.CustomObjectsApi(namespace.api)
    apps = client.AppsV1Api(namespace.api)
    catalog = DeploymentCatalog(namespace.api, NAMESPACE)
    try:
        def scaled_object() -> dict[str, Any] | None:
            try:
                return custom.get_namespaced_custom_object("keda.sh", "v1alpha1", NAMESPACE, "scaledobjects", "keda")
            except client.ApiException as error:
                if error.status == 404:
                    return None
                raise

        def served() -> bool:
            try:
                custom.list_namespaced_custom_object("keda.sh", "v1alpha1", NAMESPACE, "scaledobjects")
                return True
            except client.ApiException:
                return False

        assert await eventually(served), "the ScaledObject CRD is served"
        apps.create_namespaced_deployment(NAMESPACE, deployment("keda", {contract.ANNOTATION_ENABLED: "true",
                                                                          "autoscaling.knative.dev/max-scale": "7"}))
        await catalog.start()
        key = ServiceKey(NAMESPACE, "keda")
        assert await eventually(lambda: key in catalog.services())
        def new_actuator() -> ObjectActuator:
            return ObjectActuator(namespace.api, catalog, KEDA_API_VERSION, "scaledobjects", lambda deployment: (
                scaled_object_manifest(deployment, "kapa-scaler.kapa.svc:9095", AutoscalerConfig.default()).manifest))

        actuator = new_actuator()

        async def applied() -> dict[str, Any] | None:
            await actuator.apply({})
            return scaled_object()

        created = await applied()
        assert created is not None
        trigger = created["spec"]["triggers"][0]
        assert trigger["type"] == "external-push"
        assert trigger["metadata"]["scalerAddress"] == "kapa-scaler.kapa.svc:9095"
        assert created["spec"]["maxReplicaCount"] == 7
        assert created["metadata"]["ownerReferences"][0]["name"] == "keda"
        finalized = await eventually(lambda: (lambda found: found if found["metadata"].get("finalizers") else None)(
            scaled_object()), 30)
        assert finalized, "KEDA took the ScaledObject in hand (its finalizer)"
        # A restarted scaler (a new actuator) finds its object: KEDA's finalizer stays, the spec (generation)
        # does not change, so KEDA has nothing to react to.
        await new_actuator().apply({})
        after_restart = scaled_object()
        assert after_restart["metadata"]["finalizers"] == finalized["metadata"]["finalizers"]
        assert after_restart["metadata"]["generation"] == finalized["metadata"]["generation"]

        apps.patch_namespaced_deployment("keda", NAMESPACE, {"metadata": {"annotations": {
            "autoscaling.knative.dev/max-scale": "9"}}})
        max_scale = "autoscaling.knative.dev/max-scale"
        assert await eventually(lambda: catalog.services()[key].annotations[max_scale] == "9")
        updated = await applied()
        assert updated["spec"]["maxReplicaCount"] == 9
        assert updated["metadata"]["finalizers"] == finalized["metadata"]["finalizers"], "KEDA's finalizer kept"

        apps.patch_namespaced_deployment("keda", NAMESPACE, {"metadata": {"annotations": {
            contract.ANNOTATION_ENABLED: "false"}}})
        assert await eventually(lambda: key not in catalog.services())
        await actuator.apply({})
        # Deleted: KEDA's finalizer (the real operator runs) lets it go once KEDA has released its HPA.
        assert await eventually(lambda: scaled_object() is None, 60), "un-enrolled: its ScaledObject is deleted"
    finally:
        catalog.close()
