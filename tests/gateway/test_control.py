"""Gateway's Python API: decisions and endpoint updates change the routing state and the cache's versions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from kapa import contract
from kapa.endpoints import LocalEndpointSource
from kapa.services import Endpoint, ServiceEntry, ServiceKey, ServiceSpec

from gateway.control import Gateway, GatewayConfig
from gateway.resources import (
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, ROUTES_FIRST_ORDER, TYPE_ORDER,
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
    gateway.apply_decision(HELLO, FakeDecision(contract.MODE_SERVE))
    after = versions(gateway)
    assert gateway.state.services[HELLO].serves_directly
    assert [t for t in after if after[t] != before[t]] == [ROUTE_TYPE]
    gateway.apply_decision(HELLO, FakeDecision(contract.MODE_SERVE))  # same decision again: nothing to push
    assert versions(gateway) == after
    with pytest.raises(RoutingError):
        gateway.apply_decision(HELLO, FakeDecision("sideways"))
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


def test_add_service_keeps_what_the_scaler_and_endpoints_said() -> None:
    gateway = Gateway(GatewayConfig())
    gateway.set_service(HELLO, contract.MODE_SERVE, [POD])
    gateway.add_service(ServiceEntry(ServiceSpec(HELLO), extra_hosts=("hello.example",)))
    route = gateway.state.services[HELLO]
    assert (route.mode, route.endpoints, route.hosts[-1]) == (contract.MODE_SERVE, frozenset({POD}), "hello.example")
    gateway.remove_service(HELLO)
    assert HELLO not in gateway.state.services
    assert set(gateway.cache.snapshot()[CLUSTER_TYPE].resources) == {"kapa_activator"}


async def test_follows_an_endpoint_source_for_enrolled_services_only() -> None:
    gateway = Gateway(GatewayConfig(), [ServiceEntry(ServiceSpec(HELLO))])
    source = LocalEndpointSource()
    follower = asyncio.create_task(gateway.follow_endpoints(source.updates()))
    stranger = ServiceKey("kube-system", "dns")
    source.set(HELLO, [POD])
    source.set(stranger, [Endpoint("10.0.0.9", 53)])
    before = versions(gateway)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if gateway.state.services[HELLO].endpoints:
            break
    await source.close()
    await asyncio.wait_for(follower, 1)
    assert gateway.state.services[HELLO].endpoints == frozenset({POD})
    assert stranger not in gateway.state.services
    after = versions(gateway)
    assert {t for t in after if after[t] != before[t]} == {ENDPOINT_TYPE}
    assert after[LISTENER_TYPE] == before[LISTENER_TYPE]
