"""Kubernetes list+watch, and the EndpointSlice watch that is the cluster's `EndpointSource`.

`ListWatch` is the one way Kapa follows a kind of object (EndpointSlices here, enrolled Deployments in
kapa.kube.deployments): list, then watch from the list's resourceVersion, and list again when the watch
expires. `KubernetesEndpointSource` turns EndpointSlices into kapa.core.endpoints' pushed updates.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kapa.core.endpoints import EndpointBroadcaster, EndpointsUpdate
from kapa.core.log import get_logger
from kapa.core.services import Endpoint, ServiceKey
from kapa.kube.client import api_client

log = get_logger(__name__)

#: The label the EndpointSlice controller puts on every slice it manages, naming the owning Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: The Service port whose EndpointSlice port is the queue-proxy's serving port. Knative names the port of
#: a revision's private Service "http"; Kapa's chart names the queue-proxy's Service port the same way.
DEFAULT_PORT_NAME = "http"


@dataclass(frozen=True)
class _SliceState:
    key: ServiceKey
    endpoints: frozenset[Endpoint]
    ready: frozenset[Endpoint]


def _slice_port(slice_object: Mapping[str, Any], port_name: str) -> int | None:
    """The serving port of a slice: the port named `port_name`, else the only port of a one-port slice."""
    ports = slice_object.get("ports") or []
    for port in ports:
        if port.get("name") == port_name and port.get("port"):
            return int(port["port"])
    if len(ports) == 1 and ports[0].get("port"):
        return int(ports[0]["port"])
    return None


def parse_endpoint_slice(slice_object: Mapping[str, Any], port_name: str = DEFAULT_PORT_NAME) -> _SliceState | None:
    """The endpoints of one EndpointSlice (as the API server's JSON), or None when it names no service/port.

    Every endpoint that is not terminating is taken, ready or not (the activator probes it itself); a
    terminating one is left out, since it must receive no new request. A missing `ready` condition means
    ready, as the EndpointSlice API documents.
    """
    metadata = slice_object.get("metadata") or {}
    service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
    namespace = metadata.get("namespace")
    if not service or not namespace:
        return None
    key = ServiceKey(namespace, service)
    if not slice_object.get("endpoints"):  # an empty slice lists no ports either: nothing to warn about
        return _SliceState(key, frozenset(), frozenset())
    port = _slice_port(slice_object, port_name)
    if port is None:
        log.warning(
            "endpoint slice has no serving port",
            slice=metadata.get("name"), service=str(key), port_name=port_name,
        )
        return None
    endpoints: set[Endpoint] = set()
    ready: set[Endpoint] = set()
    for entry in slice_object.get("endpoints") or []:
        addresses = entry.get("addresses") or []
        conditions = entry.get("conditions") or {}
        if not addresses or conditions.get("terminating") is True:
            continue
        # The addresses of one endpoint are fungible (the API says consumers may use the first).
        endpoint = Endpoint(addresses[0], port)
        endpoints.add(endpoint)
        if conditions.get("ready") is not False:
            ready.add(endpoint)
    return _SliceState(key, frozenset(endpoints), frozenset(ready))


class EndpointSliceIndex:
    """Pure bookkeeping of EndpointSlices: a service's endpoints are the union over all its slices.

    `replace` takes a full list (initial list, or re-list after the watch expired); `apply` takes one watch
    event. Both return the updates to publish: one per service whose endpoint set changed.
    """

    def __init__(self, port_name: str = DEFAULT_PORT_NAME) -> None:
        self.port_name = port_name
        self._slices: dict[tuple[str, str], _SliceState] = {}  # (namespace, slice name) -> state

    def _service_state(self, key: ServiceKey) -> EndpointsUpdate:
        endpoints: set[Endpoint] = set()
        ready: set[Endpoint] = set()
        for state in self._slices.values():
            if state.key == key:
                endpoints |= state.endpoints
                ready |= state.ready
        return EndpointsUpdate(key, frozenset(endpoints), frozenset(ready))

    def _updates_for(self, keys: Iterable[ServiceKey]) -> list[EndpointsUpdate]:
        return [self._service_state(key) for key in sorted(set(keys))]

    def replace(self, slice_objects: Iterable[Mapping[str, Any]]) -> list[EndpointsUpdate]:
        touched = {state.key for state in self._slices.values()}
        self._slices = {}
        for slice_object in slice_objects:
            state = parse_endpoint_slice(slice_object, self.port_name)
            if state is not None:
                metadata = slice_object["metadata"]
                self._slices[(metadata["namespace"], metadata["name"])] = state
                touched.add(state.key)
        return self._updates_for(touched)

    def apply(self, event_type: str, slice_object: Mapping[str, Any]) -> list[EndpointsUpdate]:
        metadata = slice_object.get("metadata") or {}
        slice_id = (metadata.get("namespace", ""), metadata.get("name", ""))
        touched: set[ServiceKey] = set()
        old = self._slices.pop(slice_id, None)
        if old is not None:
            touched.add(old.key)
        if event_type in {"ADDED", "MODIFIED"}:
            state = parse_endpoint_slice(slice_object, self.port_name)
            if state is not None:
                self._slices[slice_id] = state
                touched.add(state.key)
        elif event_type != "DELETED":
            raise ValueError(f"unexpected watch event type {event_type!r}")
        return self._updates_for(touched)


class EndpointSourceError(Exception):
    """A source that cannot start (no Kubernetes configuration, for instance); the message says why."""


class WatchExpired(Exception):
    """The API server no longer has the resourceVersion we watch from (410 Gone): list again."""


class ListWatch:
    """A list, then watches resumed from the last resourceVersion, run by `_run` in one daemon thread.

    The official `kubernetes` client is synchronous, and the only asyncio port is a separate package with
    its own generated models; so the blocking list/watch runs in a thread, which parses the API server's
    JSON itself (no model deserialisation) and hands the list object to `handle_list` and each watch event
    to `handle_event` on the event loop (`call_soon_threadsafe`). All state lives on the loop's thread;
    the thread only reads the network. On 410 Gone (or any failure) it lists again.

    A subclass sets `_stopping` and `_loop` and gives `_call(api, **kwargs)`: the list (or, with
    `watch=True`, the watch) request of its resource; `kind` names the resource in log lines.
    """

    #: Server-side watch timeout: the watch returns this often and resumes from the last resourceVersion.
    WATCH_TIMEOUT_S = 240
    RETRY_DELAY_S = 1.0
    kind = "objects"

    _stopping: threading.Event
    _loop: asyncio.AbstractEventLoop | None

    def _call(self, api: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def handle_list(self, list_object: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def handle_event(self, event: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _post(self, callback: Any, payload: Mapping[str, Any]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback, payload)

    def _run(self, api: Any) -> None:
        resource_version: str | None = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    response = self._call(api, _preload_content=False)
                    try:
                        _check_status(response)
                        listed = json.loads(response.data)
                    finally:
                        response.release_conn()
                    resource_version = listed["metadata"]["resourceVersion"]
                    self._post(self.handle_list, listed)
                    log.info("listed", kind=self.kind, count=len(listed.get("items") or []), rv=resource_version)
                resource_version = self._watch(api, resource_version)
            except WatchExpired:
                log.info("watch expired, listing again", kind=self.kind, rv=resource_version)
                resource_version = None
            except Exception as error:  # noqa: BLE001 - the API server may fail in any way; keep watching
                log.warning("watch failed", kind=self.kind, error=repr(error))
                resource_version = None
                time.sleep(self.RETRY_DELAY_S)

    def _watch(self, api: Any, resource_version: str) -> str:
        """Watch from `resource_version` until the server ends the watch; return the last version seen."""
        from kubernetes.watch.watch import iter_resp_lines

        response = self._call(
            api,
            _preload_content=False,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.WATCH_TIMEOUT_S,
            _request_timeout=(10, self.WATCH_TIMEOUT_S + 30),
        )
        try:
            _check_status(response)
            for line in iter_resp_lines(response):
                if self._stopping.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                resource_version = next_resource_version(event, resource_version)
                self._post(self.handle_event, event)
        finally:
            response.close()
            response.release_conn()
        return resource_version


class KubernetesEndpointSource(EndpointBroadcaster, ListWatch):
    """EndpointSlices of Services (all namespaces, or one; every Service, or one) by list + watch, resuming on
    resourceVersion.

    The list/watch is `ListWatch`'s; after a new list only what changed is published.
    """

    kind = "endpoint slices"

    def __init__(
        self,
        api_client: Any = None,
        namespace: str | None = None,
        port_name: str = DEFAULT_PORT_NAME,
        service: str | None = None,
    ) -> None:
        super().__init__()
        self._api_client = api_client
        self._namespace = namespace
        #: Only this Service's slices (None: every Service's).
        self._service = service
        self._index = EndpointSliceIndex(port_name)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def of_service(cls, api_client: Any, key: ServiceKey) -> KubernetesEndpointSource:
        """The EndpointSlices of one Service only: a small watch in its own namespace, for following a
        component's replicas (the activators', the scalers') wherever the other watches look."""
        return cls(api_client, key.namespace, service=key.name)

    # -- called on the loop's thread ----------------------------------------------------------------------

    def handle_list(self, list_object: Mapping[str, Any]) -> None:
        """Apply a full EndpointSliceList (as JSON)."""
        for update in self._index.replace(list_object.get("items") or []):
            self._publish(update)

    def handle_event(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event (as JSON: {"type": ..., "object": ...}); BOOKMARK and ERROR change nothing."""
        event_type = event.get("type")
        if event_type in {"ADDED", "MODIFIED", "DELETED"}:
            for update in self._index.apply(event_type, event["object"]):
                self._publish(update)

    async def start(self) -> None:
        from kubernetes import client, config  # imported here: only the Kubernetes mode pays for it

        if self._api_client is None:
            try:
                self._api_client = api_client()
            except (config.ConfigException, OSError) as error:
                raise EndpointSourceError(
                    f"no Kubernetes configuration (not in a cluster, and no usable kubeconfig): {error}"
                ) from None
        self._loop = asyncio.get_running_loop()
        api = client.DiscoveryV1Api(self._api_client)
        self._thread = threading.Thread(target=self._run, args=(api,), name="endpointslice-watch", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stopping.set()
        self._close_subscriptions()

    def _call(self, api: Any, **kwargs: Any) -> Any:
        kwargs.update(label_selector=SERVICE_NAME_LABEL if self._service is None else f"{SERVICE_NAME_LABEL}={self._service}")
        if self._namespace is None:
            return api.list_endpoint_slice_for_all_namespaces(**kwargs)
        return api.list_namespaced_endpoint_slice(self._namespace, **kwargs)


def _check_status(response: Any) -> None:
    """Raise for an API error answered as an HTTP status (with `_preload_content=False` the client does not):
    WatchExpired for 410 Gone (a resourceVersion too old to watch from), RuntimeError otherwise."""
    status = getattr(response, "status", 200)
    if 200 <= status < 300:
        return
    body = response.data.decode(errors="replace")[:500]
    if status == 410:
        raise WatchExpired(body)
    raise RuntimeError(f"API server answered {status}: {body}")


def next_resource_version(event: Mapping[str, Any], current: str) -> str:
    """The resourceVersion to resume from after `event`; raises WatchExpired on 410 Gone."""
    event_type = event.get("type")
    obj = event.get("object") or {}
    if event_type == "ERROR":
        if obj.get("code") == 410:
            raise WatchExpired(obj.get("message", "resource version too old"))
        raise RuntimeError(f"watch error: {obj.get('reason')}: {obj.get('message')}")
    return (obj.get("metadata") or {}).get("resourceVersion") or current
