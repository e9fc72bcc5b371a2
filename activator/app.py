"""The running activator: services, endpoint source, probing, pokes, the proxy and the admin port, wired,
plus the drain that ends it.

Drain (SIGTERM): readiness turns false at once so the gateway and Kubernetes stop sending; after
`drain_delay_s` the listener closes (no new connections); requests held or in flight are finished; then
the process exits. The wait is bounded by the longest service timeout (plus DRAIN_MARGIN_S): by then
every held request has had its 504 and every ordinary request its queue-proxy's 504, so what is left is
a WebSocket or a streaming response that would otherwise keep the activator forever; it is cut.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from kapa.core.endpoints import EndpointSource
from kapa.core.log import get_logger
from kapa.relay import ClientTimeouts
from kapa.core.services import Endpoint, ServiceKey

from activator.admin import admin_app
from activator.backends import Backends
from activator.config import ServiceSettings
from activator.metrics import ActivatorCollector
from activator.peers import ALONE, Share
from activator.poke import Poker
from activator.proxy import ActivatorProxy
from activator.routing import Router
from activator.service import Service
from activator.throttler import Throttler

log = get_logger(__name__)

#: How often the drain checks whether everything held has finished.
DRAIN_POLL_S = 0.05
#: Added to the longest service timeout to bound the drain: a 504 given at the timeout still reaches
#: its client.
DRAIN_MARGIN_S = 2.0


class _Throttlers(Mapping[ServiceKey, Throttler]):
    """The served services' throttlers, read through the services themselves: nothing to keep in step."""

    def __init__(self, services: Mapping[ServiceKey, Service]) -> None:
        self._services = services

    def __getitem__(self, key: ServiceKey) -> Throttler:
        return self._services[key].throttler

    def __iter__(self) -> Iterator[ServiceKey]:
        return iter(self._services)

    def __len__(self) -> int:
        return len(self._services)


@dataclass(frozen=True)
class ServiceWatch:
    """One Service whose ready pods the activator follows (its own replicas, the scaler's), from a source
    that may watch just that Service."""

    source: EndpointSource
    service: ServiceKey
    on_ready: Callable[[frozenset[Endpoint]], None]


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    admin_port: int
    #: Where /metrics is served besides the admin port (None: the admin port only).
    metrics_port: int | None = None


class Activator:
    def __init__(
        self,
        settings: Sequence[ServiceSettings],
        source: EndpointSource,
        scaler_urls: Sequence[str],
        drain_delay_s: float,
        timeouts: ClientTimeouts = ClientTimeouts(),
    ) -> None:
        #: The services served now, by key; changed in place by `apply_settings`, so every part sees the same.
        self.services: dict[ServiceKey, Service] = {}
        self.router = Router()
        self.source = source
        self._watches: list[ServiceWatch] = []
        self._watch_tasks: list[asyncio.Task[None]] = []
        self._share = ALONE
        self.drain_delay_s = drain_delay_s
        self.backends = Backends(source, _Throttlers(self.services))
        self.poker = Poker(scaler_urls)
        self.proxy = ActivatorProxy(self.services, self.router, self.backends, self.poker, timeouts)
        self.draining = False
        self._runner: web.AppRunner | None = None
        self.apply_settings(settings)

    def apply_settings(self, settings: Iterable[ServiceSettings]) -> None:
        """Serve exactly these services from now on: new ones are added (with the pods already known),
        changed ones take their new limits and timeout, gone ones are no longer routed (requests under way
        for them finish as they would have). Raises RoutingError, changing nothing, on a Host or prefix
        claimed twice."""
        wanted = {item.key: item for item in settings}
        self.router.update(wanted.values())
        for key in [key for key in self.services if key not in wanted]:
            del self.services[key]
            self.backends.remove_service(key)
        for key, item in wanted.items():
            service = self.services.get(key)
            if service is None:
                service = self.services[key] = Service.from_settings(item)
                service.throttler.set_share(self._share)
                self.backends.add_service(key)
            elif service.settings != item:
                service.update(item)
        log.info("services", count=len(self.services))

    def registries(self) -> tuple[CollectorRegistry, CollectorRegistry]:
        full, scaling = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)
        full.register(ActivatorCollector(self.services.values, self.poker.sent))
        scaling.register(ActivatorCollector(self.services.values, self.poker.sent, scaling_only=True))
        return full, scaling

    async def start(self, listen: Listen) -> None:
        await self.source.start()
        self.backends.start()
        for watch in self._watches:
            await watch.source.start()
            self._watch_tasks.append(asyncio.create_task(self._follow(watch), name=f"watch {watch.service}"))
        full, scaling = self.registries()
        app = admin_app(lambda: not self.draining, self.services.keys(), self.source, full, scaling)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        ports = [listen.admin_port] + ([listen.metrics_port] if listen.metrics_port not in (None, listen.admin_port) else [])
        for port in ports:
            await web.TCPSite(self._runner, listen.host, port).start()
        await self.proxy.start(listen.host, listen.port)
        log.info("activator listening", host=listen.host, port=listen.port, admin_port=listen.admin_port,
                 metrics_port=listen.metrics_port, services=len(self.services))

    def busy(self) -> int:
        return sum(service.throttler.held + service.throttler.in_flight for service in self.services.values())

    async def drain(self) -> None:
        """Readiness false, then no new connections, then finish what is held and in flight."""
        self.draining = True
        log.info("draining: readiness false", delay_s=self.drain_delay_s, busy=self.busy())
        await asyncio.sleep(self.drain_delay_s)
        self.proxy.stop_accepting()
        limit_s = self.drain_limit_s()
        log.info("draining: listener closed", busy=self.busy(), limit_s=limit_s)
        deadline = asyncio.get_running_loop().time() + limit_s
        while self.busy() or self.proxy.busy():
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("drain limit reached; closing what is still open", busy=self.busy(),
                            connections=self.proxy.busy(), limit_s=limit_s)
                return
            await asyncio.sleep(DRAIN_POLL_S)
        log.info("drained")

    def drain_limit_s(self) -> float:
        """How long the drain waits, once the listener is closed, for what is held and in flight."""
        longest = max((service.settings.timeout_s for service in self.services.values()), default=0.0)
        return longest + DRAIN_MARGIN_S

    def watch(self, watch: ServiceWatch) -> None:
        """Follow a Service's ready pods from `start` on."""
        self._watches.append(watch)

    def set_share(self, share: Share) -> None:
        """This activator's place among its replicas (activator.peers) changed."""
        if share != self._share:
            self._share = share
            for service in self.services.values():
                service.throttler.set_share(share)
            log.info("activator replicas", index=share.index, count=share.count)

    @staticmethod
    async def _follow(watch: ServiceWatch) -> None:
        async for update in watch.source.updates():
            if update.key == watch.service:
                watch.on_ready(update.ready)

    async def close(self) -> None:
        for task in self._watch_tasks:
            task.cancel()
        for watch in self._watches:
            await watch.source.close()
        await self.proxy.close()
        await self.backends.close()
        await self.poker.close()
        await self.source.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def run(self, listen: Listen) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start(listen)
        try:
            await stop.wait()
            await self.drain()
        finally:
            await self.close()
