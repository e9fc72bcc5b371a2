"""The gateway inside the scaler's process on Kubernetes: it routes the catalog's services, sends each to its
ready pods or to the activator as the scaler's last tick decided, and balances over the ready activators.

One process holds the decisions, the catalog and the EndpointSlice watch, so the gateway follows all three
without a network hop or a second watch: a decision reaches Envoy in the tick that made it. Several scaler
replicas each run one (Envoy connects to whichever its xDS Service picks); they never write to each other,
and their decisions agree because ticks fall on the same wall-clock instants over the same Prometheus
(scaler.loop), so an Envoy that reconnects elsewhere gets the same routes.

Envoy is never left with an empty serve cluster while pods exist: a service goes to its pods only when it
has ready endpoints and its decision says serve (routing.ServiceRoute.serves_directly), else to the
activator, which holds what it cannot place yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kapa.core.endpoints import EndpointSource, EndpointsUpdate
from kapa.core.log import get_logger
from kapa.core.services import Endpoint, ServiceEntry, ServiceKey

from gateway.control import Decision, Gateway
from gateway.routing import RoutingError

log = get_logger(__name__)


class GatewayFollower:
    """Feeds a Gateway from the catalog (`on_entries`), an endpoint source (`follow`) and the scaler's
    decisions (`apply`: an Actuator of scaler.loop)."""

    def __init__(
        self,
        gateway: Gateway,
        activator_service: ServiceKey | None = None,
        activator_fallback: Sequence[Endpoint] = (),
    ) -> None:
        self.gateway = gateway
        #: The activator's Service, whose EndpointSlice port "http" is the activator's proxy port.
        self._activator_service = activator_service
        #: Where the activator is while no pod of its Service is known ready (a DNS name Envoy resolves).
        self._activator_fallback = tuple(activator_fallback)

    def on_entries(self, entries: Mapping[ServiceKey, ServiceEntry]) -> None:
        """The catalog changed: route exactly its services."""
        try:
            self.gateway.set_services(entries.values())
        except RoutingError as error:  # the catalog resolves host conflicts, so this is a bug worth a log line
            log.error("catalog not routable; keeping the previous routes", error=str(error))

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        self.gateway.apply_decisions(decisions)

    async def follow(self, source: EndpointSource) -> None:
        """Apply every endpoint update until the source closes: the activator's own Service sets the
        activator cluster, every other one its service's pods."""
        async for update in source.updates():
            self.apply_endpoints(update)

    def apply_endpoints(self, update: EndpointsUpdate) -> None:
        if update.key != self._activator_service:
            self.gateway.apply_endpoints(update)
            return
        self.gateway.set_activator(update.ready or self._activator_fallback)
        log.info("activator endpoints", ready=len(update.ready))
