"""The scaler's Kubernetes edges: which Deployments are enrolled, how many of their pods are ready, setting
their scale (`actuator: direct`), and telling their owners about bad annotations.

- `DeploymentCatalog` lists and watches Deployments (all namespaces, or one) and offers those enrolled with
  `kapa.dev/enabled: "true"` (label or annotation, on the Deployment or its pod template: kapa.inject's
  rule) as ServiceSpecs. Annotations on the Deployment apply and those on its pod template win, as for
  injection. When an enrolled Deployment's annotations change, each rejected value becomes a Warning Event
  on the Deployment naming the key and the problem (and a log line), once per change.
- `EndpointSliceReadyPods` counts ready endpoints per Service from EndpointSlices (kapa.endpoints' watch):
  the same readiness Kubernetes routes by. Unknown (None) until the first list has arrived.
- `ScaleActuator` patches `deployments/scale` to each decision's desired_pods when it differs from the
  Deployment's replicas as last seen by the catalog (so an unchanged decision costs no API call); 0 is a
  valid count.
- `ScaledObjectActuator` (`actuator: keda`) keeps a KEDA ScaledObject (kapa.scaledobject) per enrolled
  Deployment, pointing KEDA's external-push trigger at the scaler's gRPC address.

The official `kubernetes` client is synchronous: the watch runs in one daemon thread that only reads the
network and hands each parsed event to the event loop; API writes run via asyncio.to_thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from kapa import contract
from kapa.endpoints import KubernetesEndpointSource, ListWatch
from kapa.inject import is_enrolled
from kapa.log import get_logger
from kapa.webhook import event_name
from kapa.services import ServiceKey, ServiceSpec
from scaler.config import AutoscalerConfig, ConfigError, service_config
from scaler.decision import Decision

log = get_logger(__name__)

EVENT_SOURCE = "kapa-scaler"
_PREFIXES = (contract.KNATIVE_ANNOTATION_PREFIX, contract.KAPA_ANNOTATION_PREFIX)


def api_client(kubeconfig: str | None = None) -> Any:
    """An ApiClient from the pod's ServiceAccount, else from `kubeconfig` (or ~/.kube/config)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


def deployment_spec(deployment: Mapping[str, Any]) -> ServiceSpec:
    """The ServiceSpec of a Deployment (as API JSON): its key and its merged annotations."""
    metadata = deployment.get("metadata") or {}
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    merged = {**(metadata.get("annotations") or {}), **(template.get("annotations") or {})}
    # Only Kapa's and Knative's keys configure scaling; leaving out the rest (revision numbers,
    # last-applied-configuration) keeps a rollout from looking like a configuration change.
    annotations = {key: value for key, value in merged.items() if key.startswith(_PREFIXES)}
    return ServiceSpec(ServiceKey(metadata["namespace"], metadata["name"]), annotations)


def bad_annotation_event(deployment: Mapping[str, Any], error: ConfigError) -> dict[str, Any]:
    """A core/v1 Warning Event on the Deployment naming the annotation and its problem.

    Named as the webhook names its Event about the same problem (`kapa.webhook.event_name`), so the API
    server keeps one Event whichever of the two reports it first; the second creation is a conflict."""
    metadata = deployment["metadata"]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {
        "apiVersion": "apps/v1", "kind": "Deployment", "namespace": metadata["namespace"],
        "name": metadata["name"], "uid": metadata.get("uid"),
    }
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(error, involved), "namespace": metadata["namespace"]},
        "involvedObject": involved,
        "type": "Warning",
        "reason": contract.EVENT_REASON_INVALID_ANNOTATION,
        "message": f"annotation {error.key}: {error.message}",
        "source": {"component": EVENT_SOURCE},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class DeploymentCatalog(ListWatch):
    """Enrolled Deployments by list + watch; `services()` is the scaler loop's ServiceCatalog."""

    kind = "deployments"

    def __init__(self, api: Any, config: AutoscalerConfig, namespace: str | None = None) -> None:
        self._api = api
        self._config = config
        self._namespace = namespace
        #: (namespace, name) -> Deployment JSON, every Deployment (enrolment may change).
        self._deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self._services: dict[ServiceKey, ServiceSpec] = {}
        self._replicas: dict[ServiceKey, int] = {}
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- read by the loop and the actuator ---------------------------------------------------------------------

    def services(self) -> Mapping[ServiceKey, ServiceSpec]:
        return self._services

    def replicas(self, key: ServiceKey) -> int | None:
        """The Deployment's spec.replicas as last seen (None when unknown)."""
        return self._replicas.get(key)

    def enrolled_deployments(self) -> dict[ServiceKey, dict[str, Any]]:
        """The enrolled Deployments as last seen (API JSON), by service key."""
        return {key: self._deployments[(key.namespace, key.name)] for key in self._services}

    # -- state changes, on the loop's thread -------------------------------------------------------------------

    def handle_list(self, list_object: Mapping[str, Any]) -> None:
        """Apply a full DeploymentList (as JSON)."""
        self._deployments = {}
        for deployment in list_object.get("items") or []:
            metadata = deployment["metadata"]
            self._deployments[(metadata["namespace"], metadata["name"])] = deployment
        self._rebuild()

    def handle_event(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event (as JSON: {"type": ..., "object": ...}); BOOKMARK and ERROR change nothing."""
        event_type, deployment = event.get("type"), event.get("object") or {}
        metadata = deployment.get("metadata") or {}
        slot = (metadata.get("namespace", ""), metadata.get("name", ""))
        if event_type in {"ADDED", "MODIFIED"}:
            self._deployments[slot] = deployment
        elif event_type == "DELETED":
            self._deployments.pop(slot, None)
        else:
            return
        self._rebuild()

    def _rebuild(self) -> None:
        services: dict[ServiceKey, ServiceSpec] = {}
        replicas: dict[ServiceKey, int] = {}
        for deployment in self._deployments.values():
            if not is_enrolled({**deployment, "kind": "Deployment"}):
                continue
            spec = deployment_spec(deployment)
            previous = self._services.get(spec.key)
            if previous is not None and previous == spec:
                spec = previous  # unchanged: the loop recognises it by identity and re-parses nothing
            else:
                self._report(deployment, spec)
            services[spec.key] = spec
            replicas[spec.key] = int((deployment.get("spec") or {}).get("replicas", 1))
        added = services.keys() - self._services.keys()
        removed = self._services.keys() - services.keys()
        if added or removed:
            log.info("enrolled deployments changed", added=sorted(map(str, added)),
                     removed=sorted(map(str, removed)), services=len(services))
        self._services, self._replicas = services, replicas

    def _report(self, deployment: dict[str, Any], spec: ServiceSpec) -> None:
        _, errors = service_config(self._config, spec)
        for error in errors:
            log.warning("invalid autoscaling annotation; using the default", service=error.service, key=error.key,
                        error=error.message)
            if self._loop is not None:
                self._loop.create_task(self._create_event(bad_annotation_event(deployment, error)))

    async def _create_event(self, event: dict[str, Any]) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self._api)
        namespace = event["metadata"]["namespace"]
        try:
            await asyncio.to_thread(core.create_namespaced_event, namespace, event)
        except ApiException as error:
            if error.status != 409:  # 409: recorded already (by the webhook, or before a scaler restart)
                log.warning("cannot create event", namespace=namespace, error=repr(error))
        except Exception as error:  # noqa: BLE001 - an event is a courtesy; the log line already went out
            log.warning("cannot create event", namespace=namespace, error=repr(error))

    # -- running -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        from kubernetes import client

        self._loop = asyncio.get_running_loop()
        apps = client.AppsV1Api(self._api)
        threading.Thread(target=self._run, args=(apps,), name="deployment-watch", daemon=True).start()

    def close(self) -> None:
        self._stopping.set()

    def _call(self, apps: Any, **kwargs: Any) -> Any:
        if self._namespace is None:
            return apps.list_deployment_for_all_namespaces(**kwargs)
        return apps.list_namespaced_deployment(self._namespace, **kwargs)


class _ListedEndpointSource(KubernetesEndpointSource):
    """kapa.endpoints' EndpointSlice watch, remembering whether its first list has arrived."""

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
    """`actuator: direct`: set each enrolled Deployment's scale subresource to the decided pod count."""

    def __init__(self, api: Any, catalog: DeploymentCatalog) -> None:
        from kubernetes import client

        self._apps = client.AppsV1Api(api)
        self._catalog = catalog

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        for key, decision in decisions.items():
            current = self._catalog.replicas(key)
            desired = decision.desired_pods
            if current is None or current == desired or desired < 0:
                continue
            await asyncio.to_thread(
                self._apps.patch_namespaced_deployment_scale, key.name, key.namespace, {"spec": {"replicas": desired}}
            )
            log.info("scaled", service=str(key), replicas_from=current, replicas_to=desired)


class ScaledObjectActuator:
    """`actuator: keda`: keep one KEDA ScaledObject (kapa.scaledobject) per enrolled Deployment.

    KEDA then drives the Deployment from the scaler's gRPC answers; this only reconciles the objects, so the
    decisions it receives are not used, only the moment (every tick). A ScaledObject is written when its
    manifest differs from the one last written (create, or merge-patch when it exists); one whose
    Deployment is no longer enrolled is deleted (only objects labelled as Kapa's); a deleted Deployment
    takes its ScaledObject with it (owner reference).
    """

    def __init__(self, api: Any, catalog: DeploymentCatalog, scaler_address: str, config: AutoscalerConfig) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api)
        self._catalog = catalog
        self._scaler_address = scaler_address
        self._config = config
        self._written: dict[ServiceKey, dict[str, Any]] = {}

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        from kapa.scaledobject import scaled_object

        wanted = {
            key: scaled_object(deployment, self._scaler_address, self._config).manifest
            for key, deployment in self._catalog.enrolled_deployments().items()
        }
        for key, manifest in wanted.items():
            if self._written.get(key) != manifest:
                await asyncio.to_thread(self._write, key, manifest)
                self._written[key] = manifest
        for key in [key for key in self._written if key not in wanted]:
            await asyncio.to_thread(self._delete, key)
            del self._written[key]

    def _write(self, key: ServiceKey, manifest: dict[str, Any]) -> None:
        from kubernetes.client.rest import ApiException

        group, version = manifest["apiVersion"].split("/")
        try:
            self._custom.create_namespaced_custom_object(group, version, key.namespace, "scaledobjects", manifest)
            log.info("scaled object created", service=str(key))
        except ApiException as error:
            if error.status != 409:
                raise
            self._custom.patch_namespaced_custom_object(
                group, version, key.namespace, "scaledobjects", key.name, manifest
            )
            log.info("scaled object updated", service=str(key))

    def _delete(self, key: ServiceKey) -> None:
        from kubernetes.client.rest import ApiException

        from kapa.scaledobject import KEDA_API_VERSION, MANAGED_BY_LABELS

        group, version = KEDA_API_VERSION.split("/")
        try:
            current = self._custom.get_namespaced_custom_object(
                group, version, key.namespace, "scaledobjects", key.name
            )
            labels = (current.get("metadata") or {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in MANAGED_BY_LABELS.items()):
                self._custom.delete_namespaced_custom_object(group, version, key.namespace, "scaledobjects", key.name)
                log.info("scaled object deleted", service=str(key))
        except ApiException as error:
            if error.status != 404:
                raise
