"""Where a service's pods are: a stream of endpoint sets, pushed, never polled.

The activator (and the gateway) need to know the moment a pod appears, not the next time they ask. An
`EndpointSource` keeps the current set of endpoints per service and pushes every change as an
`EndpointsUpdate` carrying the *full* set for that service, so a consumer never has to merge deltas and a
slow consumer only ever sees the latest state (updates for one service coalesce while it is busy).

Two sources share that interface:

- `LocalEndpointSource`: set in-process by tests and by the local mode (`kapa up`, which also feeds it over
  the activator's admin HTTP port).
- `KubernetesEndpointSource` (kapa.kube.endpoints): a list+watch of discovery.k8s.io/v1 EndpointSlices.

Every endpoint a source knows is published, ready or not, with the subset the source itself reports ready
in `EndpointsUpdate.ready`: the activator probes each pod through its queue-proxy and uses it the moment
the probe answers, which is usually well before Kubernetes publishes readiness.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from kapa.core.services import Endpoint, ServiceKey


@dataclass(frozen=True)
class EndpointsUpdate:
    """The full set of a service's endpoints after a change; an empty set means no pod at all."""

    key: ServiceKey
    endpoints: frozenset[Endpoint]
    #: The endpoints the source itself considers ready (a subset of `endpoints`). Informational: the
    #: activator probes every endpoint itself.
    ready: frozenset[Endpoint] = frozenset()


class EndpointSource(Protocol):
    """A pushed, coalescing stream of per-service endpoint sets plus the current snapshot."""

    def snapshot(self) -> Mapping[ServiceKey, EndpointsUpdate]:
        """The current state: every service with at least one endpoint."""
        ...

    def updates(self) -> AsyncIterator[EndpointsUpdate]:
        """Every service's current state first, then each change as it happens, until the source closes."""
        ...

    async def start(self) -> None:
        """Begin producing updates (a no-op for sources fed in-process)."""
        ...

    async def close(self) -> None:
        """Stop producing updates and end every `updates()` iterator."""
        ...


class _Subscription:
    """One consumer's mailbox: the latest pending update per service, so it stays bounded by services."""

    def __init__(self) -> None:
        self.pending: dict[ServiceKey, EndpointsUpdate] = {}
        self.wakeup = asyncio.Event()
        self.closed = False

    def offer(self, update: EndpointsUpdate) -> None:
        self.pending.pop(update.key, None)  # re-insert so delivery order follows the latest change
        self.pending[update.key] = update
        self.wakeup.set()

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()


class EndpointBroadcaster:
    """The state and fan-out that every source shares. Must be used from the event loop's thread."""

    def __init__(self) -> None:
        self._state: dict[ServiceKey, EndpointsUpdate] = {}
        self._subscriptions: set[_Subscription] = set()

    def snapshot(self) -> Mapping[ServiceKey, EndpointsUpdate]:
        return dict(self._state)

    def _publish(self, update: EndpointsUpdate) -> None:
        """Record the new full set of one service and tell every consumer, unless nothing changed."""
        previous = self._state.get(update.key)
        if previous == update or (previous is None and not update.endpoints):
            return
        if update.endpoints:
            self._state[update.key] = update
        else:
            del self._state[update.key]
        for subscription in self._subscriptions:
            subscription.offer(update)

    async def updates(self) -> AsyncIterator[EndpointsUpdate]:
        subscription = _Subscription()
        for update in self._state.values():
            subscription.offer(update)
        self._subscriptions.add(subscription)
        try:
            while True:
                await subscription.wakeup.wait()
                subscription.wakeup.clear()
                while subscription.pending:
                    key = next(iter(subscription.pending))
                    yield subscription.pending.pop(key)
                if subscription.closed:
                    return
        finally:
            self._subscriptions.discard(subscription)

    def _close_subscriptions(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()


class LocalEndpointSource(EndpointBroadcaster):
    """Endpoints set in-process: by tests, and by the local mode through the activator's admin port.

    The local mode registers a replica once its queue-proxy is ready, so everything set here is reported
    ready.
    """

    def set(self, key: ServiceKey, endpoints: Iterable[Endpoint]) -> None:
        """Replace the service's endpoints with `endpoints` (empty: the service has no pod)."""
        full = frozenset(endpoints)
        self._publish(EndpointsUpdate(key, full, ready=full))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._close_subscriptions()
