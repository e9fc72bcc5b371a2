"""Gateway's Python API: decisions and endpoint updates change the routing state and the cache's versions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from kapa.core import contract
from kapa.core.endpoints import EndpointsUpdate, LocalEndpointSource
from kapa.core.services import Endpoint, ServiceEntry, ServiceKey, ServiceSpec

from gateway.control import Gateway, GatewayConfig
from gateway.follower import GatewayFollower
from gateway.resources import (
    CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, ROUTES_FIRST_ORDER, TYPE_ORDER,
)
from gateway.routing import RoutingError

HELLO = ServiceKey("default", "hello")
POD = Endpoint("10.0.0.7", 8012)


@dataclass(frozen=True)
class FakeDecision:
    """Stands in for the scaler's decision, of which the gateway reads only `.mode`."""

    mode: str


def versions(gateway: Gateway) -> dict[str, str]:
    return {type_url: snap.version for type_url, snap in gateway.cache.snapshot().items()}


def test_decisions_change_only_the_route_table() -> None:
    gateway = Gateway(GatewayConfig(), [ServiceEntry(ServiceSpec(HELLO))], [Endpoint("127.0.0.1", 8013)])
    assert gateway.state.services[HELLO].mode == contract.MODE_PROXY  # enrolled services start at the activator
    gateway.set_endpoints(HELLO, [POD])
    before = versions(gateway)
    gateway.apply_decisions({HELLO: FakeDecision(contract.MODE_SERVE)})
    after = versions(gateway)
    assert gateway.state.services[HELLO].serves_directly
    assert [t for t in after if after[t] != before[t]] == [ROUTE_TYPE]
    gateway.apply_decisions({HELLO: FakeDecision(contract.MODE_SERVE)})  # same decision again: nothing to push
    assert versions(gateway) == after
    with pytest.raises(RoutingError):
        gateway.apply_decisions({HELLO: FakeDecision("sideways")})
    assert versions(gateway) == after


def test_losing_every_pod_while_serving_moves_the_route_before_emptying_the_cluster() -> None:
    gateway = Gateway(GatewayConfig(), [ServiceEntry(ServiceSpec(HELLO))])
    gateway.set_service(HELLO, contract.MODE_SERVE, [POD])  # endpoints arrive with the decision: endpoints first
    assert gateway.cache.order == TYPE_ORDER
    gateway.set_endpoints(HELLO, [])  # every pod gone at once: the route must leave first
    assert gateway.cache.order == ROUTES_FIRST_ORDER
    assert not gateway.state.services[HELLO].serves_directly
    gateway.set_endpoints(HELLO, [POD])
    assert gateway.cache.order == TYPE_ORDER


def test_a_whole_ticks_decisions_are_one_push_and_unknown_services_are_not_routed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [ServiceKey("default", f"s{index}") for index in range(50)]
    gateway = Gateway(GatewayConfig(), [ServiceEntry(ServiceSpec(key)) for key in keys])
    for key in keys:
        gateway.set_endpoints(key, [POD])
    pushes: list[object] = []
    set_resources = gateway.cache.set_resources
    monkeypatch.setattr(gateway.cache, "set_resources", lambda *args: pushes.append(args) or set_resources(*args))
    decisions = {key: FakeDecision(contract.MODE_SERVE) for key in keys}
    decisions[ServiceKey("other", "unenrolled")] = FakeDecision(contract.MODE_SERVE)
    gateway.apply_decisions(decisions)
    assert len(pushes) == 1
    assert all(gateway.state.services[key].serves_directly for key in keys)
    assert ServiceKey("other", "unenrolled") not in gateway.state.services, "a decision does not enrol"


def test_set_services_routes_exactly_the_catalog_keeping_mode_and_pods() -> None:
    gateway = Gateway(GatewayConfig(), [ServiceEntry(ServiceSpec(HELLO))])
    gateway.set_service(HELLO, contract.MODE_SERVE, [POD])
    gateway.set_services([ServiceEntry(ServiceSpec(HELLO), extra_hosts=("hello.example",))])
    route = gateway.state.services[HELLO]
    assert (route.mode, route.endpoints, route.hosts[-1]) == (contract.MODE_SERVE, frozenset({POD}), "hello.example")
    gateway.set_services([])
    assert HELLO not in gateway.state.services
    assert set(gateway.cache.snapshot()[CLUSTER_TYPE].resources) == {"kapa_activator"}


async def test_follower_routes_ready_pods_of_enrolled_services_and_the_ready_activators() -> None:
    activator_service = ServiceKey("kapa", "kapa-activator")
    fallback = Endpoint("kapa-activator.kapa.svc.cluster.local", 8013)
    gateway = Gateway(GatewayConfig(), [ServiceEntry(ServiceSpec(HELLO))], [fallback])
    follower = GatewayFollower(gateway, activator_service, [fallback])
    source = LocalEndpointSource()
    task = asyncio.create_task(follower.follow(source))
    stranger = ServiceKey("kube-system", "dns")
    starting = Endpoint("10.0.0.8", 8012)
    before = versions(gateway)
    source.set(stranger, [Endpoint("10.0.0.9", 53)])
    source._publish(EndpointsUpdate(HELLO, frozenset({POD, starting}), ready=frozenset({POD})))
    source.set(activator_service, [Endpoint("10.0.0.2", 8013), Endpoint("10.0.0.3", 8013)])
    for _ in range(50):
        await asyncio.sleep(0.01)
        if gateway.state.services[HELLO].endpoints and len(gateway.state.activator) == 2:
            break
    assert gateway.state.services[HELLO].endpoints == frozenset({POD}), "a pod not ready yet takes nothing from Envoy"
    assert stranger not in gateway.state.services
    assert gateway.state.activator == (Endpoint("10.0.0.2", 8013), Endpoint("10.0.0.3", 8013))
    after = versions(gateway)
    assert after[LISTENER_TYPE] == before[LISTENER_TYPE]
    source.set(activator_service, [])
    for _ in range(50):
        await asyncio.sleep(0.01)
        if gateway.state.activator == (fallback,):
            break
    assert gateway.state.activator == (fallback,), "no activator pod known ready: back to the Service's name"
    await source.close()
    await asyncio.wait_for(task, 1)
