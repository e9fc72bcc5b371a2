"""The routing model and its translation into Envoy resources (pure, no Envoy)."""

from __future__ import annotations

import logging

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from kapa.core import contract
from kapa.core.services import Endpoint, ServiceEntry, ServiceKey, ServiceSpec

from gateway.resources import (
    ACTIVATOR_CLUSTER,
    ACTIVATOR_GRACE_S,
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    ListenerConfig,
    build_resources,
    route_configuration,
    service_cluster_name,
)
from gateway.routing import RoutingError, RoutingState, parse_endpoint, route_for_entry

HELLO = ServiceKey("default", "hello")
WORLD = ServiceKey("team", "world")
POD = Endpoint("10.0.0.7", contract.QUEUE_SERVING_PORT)


def state_with(mode: str, endpoints: tuple[Endpoint, ...]) -> RoutingState:
    return RoutingState().with_activator([Endpoint("127.0.0.1", 8013)]).with_service(HELLO, mode, endpoints)  # type: ignore[arg-type]


def target(state: RoutingState, key: ServiceKey = HELLO) -> str:
    (vhost,) = [v for v in route_configuration(state).virtual_hosts if v.name == str(key)]
    return vhost.routes[0].route.cluster


@pytest.mark.parametrize(
    ("mode", "endpoints", "expected"),
    [
        (contract.MODE_PROXY, (), ACTIVATOR_CLUSTER),
        (contract.MODE_PROXY, (POD,), ACTIVATOR_CLUSTER),
        (contract.MODE_SERVE, (POD,), service_cluster_name(HELLO)),
        # "serve" before any pod is known would 503; the activator holds those requests instead.
        (contract.MODE_SERVE, (), ACTIVATOR_CLUSTER),
    ],
)
def test_route_target_follows_mode(mode: str, endpoints: tuple[Endpoint, ...], expected: str) -> None:
    assert target(state_with(mode, endpoints)) == expected


@pytest.mark.parametrize("mode", [contract.MODE_SERVE, contract.MODE_PROXY])
def test_service_cluster_and_endpoints_exist_in_both_modes(mode: str) -> None:
    resources = build_resources(state_with(mode, (POD,)), ListenerConfig())
    name = service_cluster_name(HELLO)
    assert set(resources[CLUSTER_TYPE]) == {name, ACTIVATOR_CLUSTER}
    assert resources[CLUSTER_TYPE][name].type == cluster_pb2.Cluster.EDS
    (locality,) = resources[ENDPOINT_TYPE][name].endpoints
    assert [lb.endpoint.address.socket_address.port_value for lb in locality.lb_endpoints] == [POD.port]


def test_mode_switch_changes_only_the_route_table() -> None:
    serve = build_resources(state_with(contract.MODE_SERVE, (POD,)), ListenerConfig())
    proxy = build_resources(state_with(contract.MODE_PROXY, (POD,)), ListenerConfig())
    for type_url in (LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE):
        assert serve[type_url] == proxy[type_url]
    assert serve[ROUTE_TYPE] != proxy[ROUTE_TYPE]


def test_timeouts_and_safe_retries() -> None:
    serve = route_configuration(state_with(contract.MODE_SERVE, (POD,))).virtual_hosts[0].routes[0].route
    proxy = route_configuration(state_with(contract.MODE_PROXY, (POD,))).virtual_hosts[0].routes[0].route
    assert serve.timeout.seconds == contract.DEFAULT_REVISION_TIMEOUT_SECONDS
    assert proxy.timeout.seconds == contract.DEFAULT_REVISION_TIMEOUT_SECONDS + ACTIVATOR_GRACE_S
    for action in (serve, proxy):
        assert set(action.retry_policy.retry_on.split(",")) == {"connect-failure", "refused-stream"}


def test_hosts_prefixes_and_timeout_from_services_file(caplog: pytest.LogCaptureFixture) -> None:
    entry = ServiceEntry(
        ServiceSpec(HELLO, {contract.ANNOTATION_TIMEOUT_SECONDS: "30"}), extra_hosts=("hello.localhost",),
        path_prefix="/hello",
    )
    bad = ServiceEntry(ServiceSpec(WORLD, {contract.ANNOTATION_TIMEOUT_SECONDS: "soon"}), path_prefix="/")
    with caplog.at_level(logging.WARNING):
        state = RoutingState().with_route(route_for_entry(entry)).with_route(route_for_entry(bad))
    assert state.services[WORLD].timeout_s == contract.DEFAULT_REVISION_TIMEOUT_SECONDS
    assert any(
        getattr(r, "kapa_fields", {}).get("key") == contract.ANNOTATION_TIMEOUT_SECONDS
        and getattr(r, "kapa_fields", {}).get("service") == str(WORLD)
        for r in caplog.records
    )
    vhosts = {v.name: v for v in route_configuration(state).virtual_hosts}
    assert list(vhosts[str(HELLO)].domains) == [*HELLO.hosts(), "hello.localhost"]
    assert vhosts[str(HELLO)].routes[-1].route.timeout.seconds == 30 + ACTIVATOR_GRACE_S
    # Path prefixes win over the Host (as in the activator), longest first so "/" does not shadow "/hello";
    # other Hosts reach them through the catch-all host.
    assert list(vhosts["kapa_path_prefixes"].domains) == ["*"]
    for vhost in vhosts.values():
        assert [r.match.path_separated_prefix or r.match.prefix for r in vhost.routes[:2]] == ["/hello", "/"]


def test_a_path_prefix_wins_over_the_host() -> None:
    world = ServiceEntry(ServiceSpec(WORLD), path_prefix="/world")
    state = (
        RoutingState()
        .with_route(route_for_entry(world))
        .with_service(HELLO, contract.MODE_PROXY)
        .with_service(WORLD, contract.MODE_SERVE, [POD])
    )
    hello_routes = {v.name: v for v in route_configuration(state).virtual_hosts}[str(HELLO)].routes
    assert [(r.match.path_separated_prefix or r.match.prefix, r.route.cluster) for r in hello_routes] == [
        ("/world", service_cluster_name(WORLD)),
        ("/", ACTIVATOR_CLUSTER),
    ]
    trailing = RoutingState().with_route(route_for_entry(ServiceEntry(ServiceSpec(WORLD), path_prefix="/w/")))
    (vhost,) = [v for v in route_configuration(trailing).virtual_hosts if v.name == "kapa_path_prefixes"]
    assert vhost.routes[0].match.prefix == "/w/"  # a trailing slash: plain prefix, as the activator matches


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.with_route(route_for_entry(ServiceEntry(ServiceSpec(WORLD), extra_hosts=("HELLO.default",)))),
        lambda s: s.with_route(route_for_entry(ServiceEntry(ServiceSpec(WORLD), path_prefix="/hello"))),
        lambda s: s.with_service(HELLO, endpoints=[Endpoint("pod.example", 8012)]),
        lambda s: s.with_service(HELLO, mode="fast"),
    ],
)
def test_conflicting_or_invalid_changes_are_refused(change) -> None:  # type: ignore[no-untyped-def]
    state = RoutingState().with_route(route_for_entry(ServiceEntry(ServiceSpec(HELLO), path_prefix="/hello")))
    with pytest.raises(RoutingError):
        change(state)


def test_hosts_are_lowercased_and_deduplicated_for_envoy() -> None:
    entry = ServiceEntry(ServiceSpec(HELLO), extra_hosts=("Hello.Default", "hello.localhost", "*.hello.example"))
    assert route_for_entry(entry).hosts == (*HELLO.hosts(), "hello.localhost", "*.hello.example")


@pytest.mark.parametrize("host", ["hello world", "", "he*llo", "*", "a/b"])
def test_invalid_hosts_are_refused(host: str) -> None:
    with pytest.raises(RoutingError):
        route_for_entry(ServiceEntry(ServiceSpec(HELLO), extra_hosts=(host,)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8012", Endpoint("127.0.0.1", 8012)), ("[::1]:80", Endpoint("::1", 80)),
     ("activator.kapa:8013", Endpoint("activator.kapa", 8013))],
)
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "host:0", "host:http", "host:70000"])
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(RoutingError):
        parse_endpoint(text)
