"""The scaler's Kubernetes edges: how many pods of each enrolled Deployment (kapa.kube.deployments' catalog) are
ready, setting their scale (`actuator: direct`), and telling their owners about bad annotations.

- `AnnotationReporter`, the catalog's listener: when an enrolled Deployment's annotations change, each
  rejected value becomes a Warning Event on the Deployment naming the key and the problem (and a log
  line), once per change.
- `EndpointSliceReadyPods` counts ready endpoints per Service from EndpointSlices (kapa.kube.endpoints' watch):
  the same readiness Kubernetes routes by. Unknown (None) until the first list has arrived.
- `ScaleActuator` patches `deployments/scale` to each decision's desired_pods when it differs from the
  Deployment's replicas as last seen by the catalog (so an unchanged decision costs no API call); 0 is a
  valid count with `actuator: direct`, KEDA's with `actuator: keda`.
- `ObjectActuator` keeps an object per enrolled Deployment: a KEDA ScaledObject (kapa.kube.scaledobject) with
  `actuator: keda`, pointing KEDA's external-push trigger at the scaler's gRPC address (or, for Knative's
  HPA class, KEDA's cpu/memory trigger); with `actuator: direct` an HPA for each Deployment of the HPA class.

The official `kubernetes` client is synchronous: the watch runs in one daemon thread that only reads the
network and hands each parsed event to the event loop; API writes run via asyncio.to_thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from kapa.kube.deployments import DeploymentCatalog
from kapa.kube.endpoints import KubernetesEndpointSource
from kapa.core.log import get_logger
from kapa.kube.events import EventRecorder
from kapa.core.services import ServiceKey, ServiceSpec
from kapa.core.settings import AutoscalerConfig, service_config
from scaler.decision import Decision

log = get_logger(__name__)

EVENT_SOURCE = "kapa-scaler"
#: Read-modify-replace attempts on an object another controller updates too (KEDA, on its ScaledObjects).
WRITE_ATTEMPTS = 5


class AnnotationReporter:
    """The catalog's SpecListener: each rejected annotation of a new or changed enrolled Deployment becomes a
    log line and a Warning Event on the Deployment naming the key and the problem (kapa.kube.events)."""

    def __init__(self, api: Any, config: AutoscalerConfig) -> None:
        self._events = EventRecorder(api, EVENT_SOURCE)
        self._config = config

    def __call__(self, deployment: Mapping[str, Any], spec: ServiceSpec) -> None:
        _, errors = service_config(self._config, spec)
        for error in errors:
            log.warning("invalid autoscaling annotation; using the default", service=error.service, key=error.key,
                        error=error.message)  # fmt: skip
        if errors:
            metadata = deployment["metadata"]
            involved = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": metadata["namespace"],
                        "name": metadata["name"], "uid": metadata.get("uid")}  # fmt: skip
            self._events.record({k: str(v) for k, v in involved.items() if v}, errors)


class _ListedEndpointSource(KubernetesEndpointSource):
    """kapa.kube.endpoints' EndpointSlice watch, remembering whether its first list has arrived."""

    listed = False

    def handle_list(self, list_object: Mapping[str, Any]) -> None:
        super().handle_list(list_object)
        self.listed = True


class EndpointSliceReadyPods:
    """ReadyPodCounter: ready, non-terminating endpoints of the Service named like the Deployment."""

    def __init__(self, api: Any, namespace: str | None = None) -> None:
        self.source = _ListedEndpointSource(api, namespace=namespace)

    async def start(self) -> None:
        await self.source.start()

    async def close(self) -> None:
        await self.source.close()

    def ready_pods(self, key: ServiceKey) -> int | None:
        if not self.source.listed:
            return None
        update = self.source.snapshot().get(key)
        return len(update.ready) if update is not None else 0


class ScaleActuator:
    """Set each enrolled Deployment's scale subresource to the decided pod count.

    `actuator: direct`: every change, 0 included. `actuator: keda` (`leave_zero_to_keda`): only changes
    between counts of one or more. KEDA's HPA reads the same decision through GetMetrics, but only every
    --horizontal-pod-autoscaler-sync-period (15 s by default, often not settable on managed clusters) and
    not at all within its tolerance; writing the decision at once keeps Knative's 2 s reaction whatever the
    cluster's settings. The two never fight: the HPA computes the very count written here (metric = desired
    pods, target 1), so its next sync changes nothing. 0 <-> 1 stays KEDA's (activation, cooldown), since an
    HPA holding a Deployment at zero is disabled and KEDA alone brings it back.
    """

    def __init__(self, api: Any, catalog: DeploymentCatalog, leave_zero_to_keda: bool = False) -> None:
        from kubernetes import client

        self._apps = client.AppsV1Api(api)
        self._catalog = catalog
        self._leave_zero_to_keda = leave_zero_to_keda

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        for key, decision in decisions.items():
            current = self._catalog.replicas(key)
            desired = decision.desired_pods
            if current is None or current == desired or desired < 0 or decision.delegated:
                continue
            if self._leave_zero_to_keda and 0 in (current, desired):
                continue
            await asyncio.to_thread(
                self._apps.patch_namespaced_deployment_scale, key.name, key.namespace, {"spec": {"replicas": desired}}
            )
            log.info("scaled", service=str(key), replicas_from=current, replicas_to=desired)


class ObjectActuator:
    """Keep one object per enrolled Deployment, as `manifest_for(deployment)` gives it (None: none wanted):
    KEDA ScaledObjects (`actuator: keda`), or HorizontalPodAutoscalers for Knative's HPA class (`actuator:
    direct`). The decisions it receives are not used, only the moment (every tick).

    An object is written when its manifest differs from the one last written: created, or, when it exists
    and differs, its spec replaced (not merged, so a key the manifest dropped goes too) while its metadata
    (KEDA's finalizer, others' labels) stays. One no longer wanted is deleted, if it is labelled as Kapa's;
    a deleted Deployment takes its objects with it (owner reference).
    """

    def __init__(
        self, api: Any, catalog: DeploymentCatalog, api_version: str, plural: str,
        manifest_for: Callable[[Mapping[str, Any]], dict[str, Any] | None],
    ) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api)
        self._catalog = catalog
        self._group, self._version = api_version.split("/")
        self._plural = plural
        self._manifest_for = manifest_for
        self._written: dict[ServiceKey, dict[str, Any]] = {}

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        wanted = {}
        for key, deployment in self._catalog.enrolled_deployments().items():
            manifest = self._manifest_for(deployment)
            if manifest is not None:
                wanted[key] = manifest
        for key, manifest in wanted.items():
            if self._written.get(key) != manifest:
                await asyncio.to_thread(self._write, key, manifest)
                self._written[key] = manifest
        for key in [key for key in self._written if key not in wanted]:
            await asyncio.to_thread(self._delete, key)
            del self._written[key]

    def _write(self, key: ServiceKey, manifest: dict[str, Any]) -> None:
        from kubernetes.client.rest import ApiException

        where = (self._group, self._version, key.namespace, self._plural)
        try:
            self._custom.create_namespaced_custom_object(*where, manifest)
            log.info("object created", kind=manifest["kind"], service=str(key))
            return
        except ApiException as error:
            if error.status != 409:
                raise
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            current = self._custom.get_namespaced_custom_object(*where, key.name)
            metadata = current["metadata"]
            labels = {**(metadata.get("labels") or {}), **manifest["metadata"]["labels"]}
            owners = manifest["metadata"].get("ownerReferences", metadata.get("ownerReferences"))
            if _contains(current.get("spec"), manifest["spec"]) and (metadata.get("labels"), metadata.get(
                    "ownerReferences")) == (labels, owners):
                return  # as wanted already (a scaler restarting finds its objects): no write, nothing to react to
            # The live object with our spec, labels and owner: its finalizers (KEDA's) and others' keys stay.
            replacement = {**current, "spec": manifest["spec"],
                           "metadata": {**metadata, "labels": labels, "ownerReferences": owners}}
            try:
                self._custom.replace_namespaced_custom_object(*where, key.name, replacement)
            except ApiException as error:
                # 409: its owner (KEDA) changed it since we read it (status, finalizer): read it again.
                if error.status != 409 or attempt == WRITE_ATTEMPTS:
                    raise
                continue
            log.info("object updated", kind=manifest["kind"], service=str(key))
            return

    def _delete(self, key: ServiceKey) -> None:
        from kubernetes.client.rest import ApiException

        from kapa.kube.scaledobject import MANAGED_BY_LABELS

        where = (self._group, self._version, key.namespace, self._plural)
        try:
            current = self._custom.get_namespaced_custom_object(*where, key.name)
            labels = (current.get("metadata") or {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in MANAGED_BY_LABELS.items()):
                self._custom.delete_namespaced_custom_object(*where, key.name)
                log.info("object deleted", plural=self._plural, service=str(key))
        except ApiException as error:
            if error.status != 404:
                raise


def _contains(current: object, wanted: object) -> bool:
    """True when `current` has every value of `wanted` (dicts may hold more keys: what the API server and
    KEDA default or add; lists must match item by item)."""
    if isinstance(wanted, dict):
        return isinstance(current, dict) and all(_contains(current.get(key), value) for key, value in wanted.items())
    if isinstance(wanted, list):
        return isinstance(current, list) and len(current) == len(wanted) and all(
            _contains(have, want) for have, want in zip(current, wanted))
    return current == wanted
