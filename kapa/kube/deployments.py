"""The one service catalog on Kubernetes: enrolled Deployments, by list + watch, as services-file entries.

The scaler, the gateway (in the scaler's process) and every activator replica read the services they
serve from here, so a Deployment enrolled, re-annotated, unlabelled or deleted changes all three within
one watch event, and containerConcurrency or a timeout can never differ between what the activator and
the queue-proxy enforce (both read the same annotations). The chart has no list of services.

- A Deployment is enrolled with `kapa.dev/enabled: "true"` (label or annotation, on the Deployment or its
  pod template: kapa.kube.inject's rule). Its Service is the one with the same name (Knative's convention of a
  revision and its private Service), whose EndpointSlices name the pods.
- Annotations on the Deployment apply and those on its pod template win, as for injection; only Kapa's and
  Knative's keys are kept, so a rollout's bookkeeping annotations are no configuration change.
- Hosts: `NAME.NAMESPACE`, `NAME.NAMESPACE.svc`, `NAME.NAMESPACE.svc.<cluster domain>` plus the names in
  `kapa.dev/hosts`. An extra host that is malformed, or that an earlier service (by namespace/name) already
  answers, is left out with a log line naming the annotation: every replica of every component resolves a
  conflict the same way, and one bad annotation costs only that host.

`subscribe()` callbacks run on the event loop after every change of the entries, with the full set.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kapa.core import contract
from kapa.kube.endpoints import ListWatch
from kapa.kube.inject import is_enrolled
from kapa.core.log import get_logger
from kapa.core.services import DEFAULT_CLUSTER_DOMAIN, ServiceEntry, ServiceKey, ServiceSpec, parse_host

log = get_logger(__name__)

_PREFIXES = (contract.KNATIVE_ANNOTATION_PREFIX, contract.KAPA_ANNOTATION_PREFIX)

#: Called with the Deployment (API JSON) and its spec whenever an enrolled Deployment's spec is new or changed.
SpecListener = Callable[[Mapping[str, Any], ServiceSpec], None]
#: Called with every enrolled service's entry after any change.
EntriesListener = Callable[[Mapping[ServiceKey, ServiceEntry]], None]


def deployment_spec(deployment: Mapping[str, Any]) -> ServiceSpec:
    """The ServiceSpec of a Deployment (as API JSON): its key and its merged Kapa and Knative annotations."""
    metadata = deployment.get("metadata") or {}
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    merged = {**(metadata.get("annotations") or {}), **(template.get("annotations") or {})}
    annotations = {key: value for key, value in merged.items() if key.startswith(_PREFIXES)}
    return ServiceSpec(ServiceKey(metadata["namespace"], metadata["name"]), annotations)


def extra_hosts(spec: ServiceSpec) -> tuple[str, ...]:
    """The hosts named by `kapa.dev/hosts` (comma-separated); a malformed one is logged and left out."""
    raw = spec.annotations.get(contract.ANNOTATION_HOSTS, "")
    hosts: list[str] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        try:
            hosts.append(parse_host(item))
        except ValueError as error:
            log.warning("invalid host left out", service=str(spec.key), key=contract.ANNOTATION_HOSTS, error=str(error))
    return tuple(dict.fromkeys(hosts))


def catalog_entries(specs: Iterable[ServiceSpec], cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> dict[ServiceKey, ServiceEntry]:
    """Entries for `specs`, in key order, each extra host given to the first service that claims it."""
    ordered = sorted(specs, key=lambda spec: spec.key)
    entries = {spec.key: ServiceEntry(spec, cluster_domain=cluster_domain) for spec in ordered}
    claimed = {host: entry.spec.key for entry in entries.values() for host in entry.hosts}
    for spec in ordered:
        kept = []
        for host in extra_hosts(spec):
            owner = claimed.setdefault(host, spec.key)
            if owner == spec.key:
                kept.append(host)
            else:
                log.warning("host already answered by another service; left out", service=str(spec.key),
                            key=contract.ANNOTATION_HOSTS, host=host, owner=str(owner))
        if kept:
            entries[spec.key] = ServiceEntry(spec, extra_hosts=tuple(kept), cluster_domain=cluster_domain)
    return entries


class DeploymentCatalog(ListWatch):
    """Enrolled Deployments by list + watch (ListWatch relists on 410 Gone); `services()` is the scaler
    loop's ServiceCatalog, `entries()` and `subscribe()` serve the activator and the gateway."""

    kind = "deployments"

    def __init__(
        self,
        api: Any,
        namespace: str | None = None,
        cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
        on_spec_change: SpecListener | None = None,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._cluster_domain = cluster_domain
        self._on_spec_change = on_spec_change
        #: (namespace, name) -> Deployment JSON, every Deployment (enrolment may change).
        self._deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self._services: dict[ServiceKey, ServiceSpec] = {}
        self._entries: dict[ServiceKey, ServiceEntry] = {}
        self._replicas: dict[ServiceKey, int] = {}
        self._listeners: list[EntriesListener] = []
        #: Set once the first list has been applied: before it, "no service" means "not known yet".
        self.listed = asyncio.Event()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- read by the loop, the actuators, the activator and the gateway ----------------------------------------

    def services(self) -> Mapping[ServiceKey, ServiceSpec]:
        return self._services

    def entries(self) -> Mapping[ServiceKey, ServiceEntry]:
        return self._entries

    def replicas(self, key: ServiceKey) -> int | None:
        """The Deployment's spec.replicas as last seen (None when unknown)."""
        return self._replicas.get(key)

    def enrolled_deployments(self) -> dict[ServiceKey, dict[str, Any]]:
        """The enrolled Deployments as last seen (API JSON), by service key."""
        return {key: self._deployments[(key.namespace, key.name)] for key in self._services}

    def subscribe(self, listener: EntriesListener) -> None:
        """Call `listener` with every entry after each change (and now, if the first list has arrived)."""
        self._listeners.append(listener)
        if self.listed.is_set():
            listener(self._entries)

    # -- state changes, on the loop's thread -------------------------------------------------------------------

    def handle_list(self, list_object: Mapping[str, Any]) -> None:
        """Apply a full DeploymentList (as JSON)."""
        self._deployments = {}
        for deployment in list_object.get("items") or []:
            metadata = deployment["metadata"]
            self._deployments[(metadata["namespace"], metadata["name"])] = deployment
        self._rebuild()
        self.listed.set()

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
            elif self._on_spec_change is not None:
                self._on_spec_change(deployment, spec)
            services[spec.key] = spec
            replicas[spec.key] = int((deployment.get("spec") or {}).get("replicas", 1))
        added = services.keys() - self._services.keys()
        removed = self._services.keys() - services.keys()
        if added or removed:
            log.info("enrolled deployments changed", added=sorted(map(str, added)),
                     removed=sorted(map(str, removed)), services=len(services))
        changed = services != self._services
        self._services, self._replicas = services, replicas
        if changed or not self.listed.is_set():
            self._entries = catalog_entries(services.values(), self._cluster_domain)
            for listener in self._listeners:
                listener(self._entries)

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
