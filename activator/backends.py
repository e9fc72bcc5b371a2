"""Which of a service's pods take requests: endpoint updates in, probed readiness out to the throttlers.

An endpoint pushed by the source (Kubernetes or local) is probed at once and then every few milliseconds
until its queue-proxy answers ready; the moment it does, the service's throttler gets the pod and hands
it the held requests, without waiting for Kubernetes to publish readiness. Probing is fastest while the
service holds requests (someone is waiting on exactly this), slower otherwise. An endpoint that leaves the
set stops being probed and used. A pod whose request failed is taken out and probed again: it comes back
within one probe if it was a one-off, and stays out if it is gone.

The fast period applies only to a true cold start (requests held and no pod ready): that is where the
latency budget is spent, and it bounds the cost when many pods start at once (then the first ready pod
takes the load and the rest are probed at Knative's 50 ms).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from kapa.core.endpoints import EndpointSource, EndpointsUpdate
from kapa.core.log import get_logger
from kapa.core.services import Endpoint, ServiceKey

from activator.probe import probe
from activator.throttler import Throttler

log = get_logger(__name__)

#: Probe interval while requests are held and no pod is ready: the activation-latency budget is 20 ms.
HOLDING_PROBE_INTERVAL_S = 0.01
#: Probe interval otherwise (Knative's aggressive probing period).
IDLE_PROBE_INTERVAL_S = 0.05

Prober = Callable[[Endpoint], Awaitable[bool]]


class Backends:
    """Feeds each service's throttler from an endpoint source, probing every new endpoint to readiness."""

    def __init__(
        self,
        source: EndpointSource,
        throttlers: Mapping[ServiceKey, Throttler],
        prober: Prober = probe,
        holding_interval_s: float = HOLDING_PROBE_INTERVAL_S,
        idle_interval_s: float = IDLE_PROBE_INTERVAL_S,
    ) -> None:
        self._source = source
        self._throttlers = throttlers
        self._prober = prober
        self._holding_interval_s = holding_interval_s
        self._idle_interval_s = idle_interval_s
        self._probes: dict[tuple[ServiceKey, Endpoint], asyncio.Task[None]] = {}
        self._current: dict[ServiceKey, frozenset[Endpoint]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="activator-backends")

    async def close(self) -> None:
        tasks = list(self._probes.values()) + ([self._task] if self._task else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._probes.clear()

    async def _follow(self) -> None:
        async for update in self._source.updates():
            self.apply(update)

    def apply(self, update: EndpointsUpdate) -> None:
        """Take the service's new endpoint set: probe the new ones, forget the gone ones."""
        throttler = self._throttlers.get(update.key)
        if throttler is None:
            log.debug("endpoints for a service the activator does not serve", service=str(update.key))
            return
        previous = self._current.get(update.key, frozenset())
        self._current[update.key] = update.endpoints
        for endpoint in previous - update.endpoints:
            task = self._probes.pop((update.key, endpoint), None)
            if task is not None:
                task.cancel()
        throttler.set_endpoints(update.endpoints)
        for endpoint in update.endpoints - previous:
            self._start_probe(update.key, endpoint, throttler)
        log.info("endpoints", service=str(update.key), count=len(update.endpoints),
                 added=len(update.endpoints - previous), removed=len(previous - update.endpoints))

    def add_service(self, key: ServiceKey) -> None:
        """A service was enrolled (its throttler is now in the mapping): take the pods the source already
        knows, which it reported while the service was still unknown here."""
        update = self._source.snapshot().get(key)
        if update is not None:
            self.apply(update)

    def remove_service(self, key: ServiceKey) -> None:
        """A service is no longer served: stop probing its pods (requests on them finish by themselves)."""
        self._current.pop(key, None)
        for slot in [slot for slot in self._probes if slot[0] == key]:
            self._probes.pop(slot).cancel()

    def suspect(self, key: ServiceKey, endpoint: Endpoint) -> None:
        """A request to the pod failed: stop sending it new requests until it answers a probe again."""
        throttler = self._throttlers.get(key)
        if throttler is None or endpoint not in self._current.get(key, ()):
            return
        throttler.mark_unready(endpoint)
        if (key, endpoint) not in self._probes:
            self._start_probe(key, endpoint, throttler)

    def _start_probe(self, key: ServiceKey, endpoint: Endpoint, throttler: Throttler) -> None:
        task = asyncio.create_task(self._probe_until_ready(endpoint, throttler), name=f"probe {key} {endpoint}")
        self._probes[(key, endpoint)] = task
        task.add_done_callback(lambda done: self._probe_done(key, endpoint, done))

    def _probe_done(self, key: ServiceKey, endpoint: Endpoint, task: asyncio.Task[None]) -> None:
        if self._probes.get((key, endpoint)) is task:
            del self._probes[(key, endpoint)]
        if not task.cancelled() and task.exception() is not None:
            log.error("prober failed", service=str(key), endpoint=str(endpoint), error=repr(task.exception()))

    async def _probe_until_ready(self, endpoint: Endpoint, throttler: Throttler) -> None:
        while not await self._prober(endpoint):
            cold_start = throttler.held and not throttler.ready_count
            await asyncio.sleep(self._holding_interval_s if cold_start else self._idle_interval_s)
        throttler.mark_ready(endpoint)
