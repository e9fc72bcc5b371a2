"""The gateway's plain Python API: the routing state, fed by the scaler and an endpoint source, served over xDS.

    gateway = Gateway(GatewayConfig(xds_port=18000), services=load_services("services.yaml"))
    await gateway.start()
    gateway.set_activator([Endpoint("10.0.0.5", 8013)])
    gateway.set_service(key, "serve", endpoints)       # or set_mode / set_endpoints separately
    gateway.set_services(entries)                      # the catalog: hosts, prefix, timeout per service
    gateway.apply_decisions({key: decision})           # anything with .mode: "serve" | "proxy"
    gateway.apply_endpoints(update)                    # an EndpointsUpdate: its ready pods (gateway.follower)

Every change builds a new `RoutingState`, turns it into Envoy resources and hands them to the snapshot
cache, which pushes to every connected Envoy the types whose content changed. A change that would be
invalid raises `RoutingError` and leaves the state as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.core.services import Endpoint, ServiceEntry, ServiceKey

from gateway.ads import TypeStatus, XdsServer
from gateway.cache import SnapshotCache
from gateway.resources import ROUTES_FIRST_ORDER, TYPE_ORDER, ListenerConfig, build_resources
from gateway.routing import Mode, RoutingState, route_for_entry

log = get_logger(__name__)


class Decision(Protocol):
    """The part of a scaler decision the gateway reads."""

    @property
    def mode(self) -> str: ...


class EndpointsChange(Protocol):
    """The part of kapa.kube.endpoints.EndpointsUpdate the gateway reads."""

    @property
    def key(self) -> ServiceKey: ...

    @property
    def ready(self) -> frozenset[Endpoint]: ...


@dataclass(frozen=True)
class GatewayConfig:
    xds_host: str = "0.0.0.0"
    xds_port: int = contract.XDS_PORT
    listener: ListenerConfig = ListenerConfig()


class Gateway:
    """Owns the RoutingState and the xDS server that serves it."""

    def __init__(
        self,
        config: GatewayConfig,
        services: Iterable[ServiceEntry] = (),
        activator: Iterable[Endpoint] = (),
    ) -> None:
        self.config = config
        self.cache = SnapshotCache()
        self.xds = XdsServer(self.cache, config.xds_host, config.xds_port)
        self._state = RoutingState().with_activator(activator).with_catalog(route_for_entry(entry) for entry in services)
        self._publish()

    @property
    def state(self) -> RoutingState:
        return self._state

    def xds_status(self) -> dict[str, dict[str, TypeStatus]]:
        """Per connected Envoy (node id) and type: the version it ACKed and the last one it rejected."""
        return self.xds.servicer.status()

    async def start(self) -> None:
        await self.xds.start()

    async def stop(self) -> None:
        await self.xds.stop()

    # -- changes ------------------------------------------------------------------------------------------

    def set_service(self, key: ServiceKey, mode: Mode | None = None, endpoints: Iterable[Endpoint] | None = None) -> None:
        """Set a service's mode and/or endpoints (None keeps the current value); adds an unknown service."""
        self._replace(self._state.with_service(key, mode, endpoints))

    def set_mode(self, key: ServiceKey, mode: Mode) -> None:
        self.set_service(key, mode=mode)

    def set_endpoints(self, key: ServiceKey, endpoints: Iterable[Endpoint]) -> None:
        self.set_service(key, endpoints=endpoints)

    def set_services(self, entries: Iterable[ServiceEntry]) -> None:
        """Route exactly these services (a whole catalog: the others are unrouted), each from its entry
        (hosts, prefix, timeout), keeping the mode and pods already known of each."""
        self._replace(self._state.with_catalog(route_for_entry(entry) for entry in entries))

    def remove_service(self, key: ServiceKey) -> None:
        self._replace(self._state.without_service(key))

    def set_activator(self, endpoints: Iterable[Endpoint]) -> None:
        self._replace(self._state.with_activator(endpoints))

    def apply_decisions(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        """Follow the scaler's decisions: each `.mode` picks pods ("serve") or the activator ("proxy"). One
        routing change (one xDS push) for a whole tick, however many services switched."""
        self._replace(self._state.with_modes({key: decision.mode for key, decision in decisions.items()}))  # type: ignore[misc]

    def apply_endpoints(self, update: EndpointsChange) -> None:
        """Take a service's new endpoint set; only the ready endpoints take requests from Envoy (the
        activator probes the others itself). A source may report every Service of a cluster; only the
        services routed here are taken, the others are ignored."""
        if update.key in self._state.services:
            self.set_endpoints(update.key, update.ready)

    def _replace(self, state: RoutingState) -> None:
        if state is self._state:  # RoutingState returns itself for a no-op change
            return
        previous, self._state = self._state, state
        self._publish(routes_first=_leaves_pods(previous, state))

    def _publish(self, routes_first: bool = False) -> None:
        changed = self.cache.set_resources(
            build_resources(self._state, self.config.listener), ROUTES_FIRST_ORDER if routes_first else TYPE_ORDER
        )
        if changed:
            versions = {type_url.rsplit(".", 1)[-1]: self.cache.snapshot()[type_url].version for type_url in changed}
            log.info("routing changed", services=len(self._state.services), **versions)


def _leaves_pods(previous: RoutingState, state: RoutingState) -> bool:
    """True when some service's traffic moves from its pods to the activator (see ROUTES_FIRST_ORDER)."""
    return any(
        route.serves_directly and key in state.services and not state.services[key].serves_directly
        for key, route in previous.services.items()
    )
