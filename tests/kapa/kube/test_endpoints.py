"""Endpoint sources: the local source's stream, and the Kubernetes source's handling of recorded events."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kapa.core.endpoints import EndpointsUpdate, LocalEndpointSource
from kapa.kube.endpoints import EndpointSliceIndex, KubernetesEndpointSource, WatchExpired, _check_status, next_resource_version, parse_endpoint_slice
from kapa.core.services import Endpoint, ServiceKey

HELLO = ServiceKey("default", "hello")
WORLD = ServiceKey("apps", "world")


def endpoint_slice(
    name: str,
    service: str = "hello",
    namespace: str = "default",
    endpoints: list[tuple[str, bool | None, bool]] = (),  # (address, ready, terminating)
    ports: list[dict[str, Any]] | None = None,
    resource_version: str = "1",
) -> dict[str, Any]:
    """An EndpointSlice as the API server sends it (recorded shape, trimmed to the fields that matter)."""
    entries = []
    for address, ready, terminating in endpoints:
        conditions: dict[str, Any] = {"serving": ready is not False, "terminating": terminating}
        if ready is not None:
            conditions["ready"] = ready
        entries.append({
            "addresses": [address],
            "conditions": conditions,
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "name": f"{service}-{address}", "namespace": namespace},
        })
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": resource_version,
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        },
        "addressType": "IPv4",
        "endpoints": entries,
        "ports": ports if ports is not None else [
            {"name": "http", "port": 8012, "protocol": "TCP"},
            {"name": "metrics", "port": 9091, "protocol": "TCP"},
        ],
    }


# --- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ports", "expected_port"),
    [
        ([{"name": "http", "port": 8012}, {"name": "metrics", "port": 9091}], 8012),
        ([{"name": "metrics", "port": 9091}, {"name": "http", "port": 8012}], 8012),
        ([{"name": "", "port": 8012}], 8012),  # single unnamed port of a one-port Service
        ([{"name": "web", "port": 8012}, {"name": "metrics", "port": 9091}], None),
        ([], None),
    ],
)
def test_serving_port_is_the_named_port(ports: list[dict[str, Any]], expected_port: int | None) -> None:
    state = parse_endpoint_slice(endpoint_slice("s", endpoints=[("10.0.0.1", True, False)], ports=ports))
    if expected_port is None:
        assert state is None
    else:
        assert state is not None and state.endpoints == {Endpoint("10.0.0.1", expected_port)}


def test_not_ready_endpoints_are_taken_and_flagged_terminating_ones_are_not() -> None:
    state = parse_endpoint_slice(endpoint_slice("s", endpoints=[
        ("10.0.0.1", True, False),
        ("10.0.0.2", False, False),  # starting: the activator probes it itself
        ("10.0.0.3", None, False),  # no ready condition: ready, as the API documents
        ("10.0.0.4", False, True),  # terminating: no new requests
    ]))
    assert state is not None and state.key == HELLO
    assert state.endpoints == {Endpoint(f"10.0.0.{i}", 8012) for i in (1, 2, 3)}
    assert state.ready == {Endpoint("10.0.0.1", 8012), Endpoint("10.0.0.3", 8012)}


def test_slice_without_service_label_is_ignored() -> None:
    unlabelled = endpoint_slice("s", endpoints=[("10.0.0.1", True, False)])
    del unlabelled["metadata"]["labels"]["kubernetes.io/service-name"]
    assert parse_endpoint_slice(unlabelled) is None


# --- the index over recorded watch events ----------------------------------------------------------------


def test_index_unions_slices_of_one_service_and_reports_each_change() -> None:
    index = EndpointSliceIndex()
    assert index.replace([
        endpoint_slice("hello-a", endpoints=[("10.0.0.1", True, False)]),
        endpoint_slice("world-a", service="world", namespace="apps", endpoints=[("10.0.1.1", True, False)]),
    ]) == [
        EndpointsUpdate(WORLD, frozenset({Endpoint("10.0.1.1", 8012)}), frozenset({Endpoint("10.0.1.1", 8012)})),
        EndpointsUpdate(HELLO, frozenset({Endpoint("10.0.0.1", 8012)}), frozenset({Endpoint("10.0.0.1", 8012)})),
    ]
    # A second slice of the same service adds a starting pod.
    (update,) = index.apply("ADDED", endpoint_slice("hello-b", endpoints=[("10.0.0.2", False, False)]))
    assert update.key == HELLO
    assert update.endpoints == {Endpoint("10.0.0.1", 8012), Endpoint("10.0.0.2", 8012)}
    assert update.ready == {Endpoint("10.0.0.1", 8012)}
    # The pod turns ready.
    (update,) = index.apply("MODIFIED", endpoint_slice("hello-b", endpoints=[("10.0.0.2", True, False)]))
    assert update.ready == update.endpoints
    # The first slice goes away: only the second's pod is left.
    (update,) = index.apply("DELETED", endpoint_slice("hello-a"))
    assert update.endpoints == {Endpoint("10.0.0.2", 8012)}
    # A re-list that no longer has any of hello's slices empties it, and leaves world untouched.
    updates = index.replace([
        endpoint_slice("world-a", service="world", namespace="apps", endpoints=[("10.0.1.1", True, False)]),
    ])
    assert EndpointsUpdate(HELLO, frozenset(), frozenset()) in updates


def test_index_rejects_unknown_event_types() -> None:
    with pytest.raises(ValueError, match="BOGUS"):
        EndpointSliceIndex().apply("BOGUS", endpoint_slice("s"))


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "ADDED", "object": endpoint_slice("s", resource_version="17")}, "17"),
        ({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "metadata": {"resourceVersion": "42"}}}, "42"),
        ({"type": "DELETED", "object": {"metadata": {}}}, "5"),
    ],
)
def test_resource_version_follows_events(event: dict[str, Any], expected: str) -> None:
    assert next_resource_version(event, "5") == expected


def test_410_gone_means_list_again() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 5 (99)"}}
    with pytest.raises(WatchExpired):
        next_resource_version(gone, "5")
    with pytest.raises(RuntimeError, match="Forbidden"):
        next_resource_version({"type": "ERROR", "object": {"code": 403, "reason": "Forbidden", "message": "no"}}, "5")


def test_api_errors_answered_as_http_status_are_raised() -> None:
    _check_status(_Response(b"{}"))
    with pytest.raises(WatchExpired):
        _check_status(_Response(b'{"kind":"Status","code":410}', status=410))
    with pytest.raises(RuntimeError, match="403.*forbidden"):
        _check_status(_Response(b'{"kind":"Status","code":403,"message":"forbidden"}', status=403))


# --- the source: stream semantics ------------------------------------------------------------------------


async def test_local_source_streams_snapshot_then_changes_and_coalesces() -> None:
    source = LocalEndpointSource()
    source.set(HELLO, [Endpoint("127.0.0.1", 1)])
    stream = source.updates()
    first = await anext(stream)
    assert first.endpoints == {Endpoint("127.0.0.1", 1)} and first.ready == first.endpoints
    # Three changes while the consumer is busy arrive as the latest one only.
    source.set(HELLO, [Endpoint("127.0.0.1", 2)])
    source.set(HELLO, [Endpoint("127.0.0.1", 2), Endpoint("127.0.0.1", 3)])
    source.set(HELLO, [Endpoint("127.0.0.1", 3)])
    source.set(HELLO, [Endpoint("127.0.0.1", 3)])  # no change: nothing published
    assert (await anext(stream)).endpoints == {Endpoint("127.0.0.1", 3)}
    source.set(HELLO, [])
    assert (await anext(stream)).endpoints == frozenset()
    assert source.snapshot() == {}
    await source.close()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


class _Response:
    """Stands in for the urllib3 response the client returns with _preload_content=False."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        self.data = body
        self.status = status

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        yield self.data

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class _RecordedApi:
    """Replays recorded list and watch responses in order, as DiscoveryV1Api would return them.

    The first response is free; each later one waits for `release()`, so the test sees every state.
    """

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = responses
        self.calls: list[dict[str, Any]] = []
        self.released = threading.Semaphore(1)
        self.exhausted = threading.Event()

    def release(self, count: int = 1) -> None:
        self.released.release(count)

    def list_endpoint_slice_for_all_namespaces(self, **kwargs: Any) -> _Response:
        self.released.acquire()
        self.calls.append(kwargs)
        if not self.responses:
            self.exhausted.set()
            threading.Event().wait(10)  # like a quiet watch; the daemon thread is abandoned at the end
        return _Response(self.responses.pop(0))


def _lines(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


async def test_kubernetes_source_lists_watches_resumes_and_relists_on_410() -> None:
    listed = {"kind": "EndpointSliceList", "metadata": {"resourceVersion": "10"},
              "items": [endpoint_slice("hello-a", endpoints=[("10.0.0.1", True, False)], resource_version="9")]}
    relisted = {"kind": "EndpointSliceList", "metadata": {"resourceVersion": "30"},
                "items": [endpoint_slice("hello-a", endpoints=[("10.0.0.3", True, False)], resource_version="29")]}
    api = _RecordedApi([
        json.dumps(listed).encode(),
        _lines(
            {"type": "ADDED", "object": endpoint_slice("hello-b", endpoints=[("10.0.0.2", False, False)], resource_version="11")},
            {"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "metadata": {"resourceVersion": "12"}}},
        ),
        _lines({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}),
        json.dumps(relisted).encode(),
    ])
    source = KubernetesEndpointSource(api_client=object())
    source._loop = asyncio.get_running_loop()
    stream = source.updates()
    threading.Thread(target=source._run, args=(api,), daemon=True).start()

    seen = [await asyncio.wait_for(anext(stream), 5)]
    api.release()  # the watch: a starting pod in a second slice, then a bookmark
    seen.append(await asyncio.wait_for(anext(stream), 5))
    api.release(3)  # the next watch ends in 410 Gone; the re-list; then a quiet watch
    seen.append(await asyncio.wait_for(anext(stream), 5))
    assert [u.endpoints for u in seen] == [
        {Endpoint("10.0.0.1", 8012)},
        {Endpoint("10.0.0.1", 8012), Endpoint("10.0.0.2", 8012)},
        {Endpoint("10.0.0.3", 8012)},  # the re-list after 410 replaced both slices' pods
    ]
    assert seen[1].ready == {Endpoint("10.0.0.1", 8012)}
    await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, api.exhausted.wait, 5), 6)
    await source.close()
    # The first watch resumed from the list's version, the second from the bookmark's; after 410 a fresh list.
    watches = [call for call in api.calls if call.get("watch")]
    assert [call["resource_version"] for call in watches[:2]] == ["10", "12"]
    assert all(call["label_selector"] == "kubernetes.io/service-name" for call in api.calls)
    assert "watch" not in api.calls[3]
