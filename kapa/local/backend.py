"""The local backend: the scaler's desired replica counts become running app + queue-proxy process pairs.

It carries out the scaler's decisions (an Actuator) and tells the activator, the gateway and the scaler which
replicas are ready (a replica counts as ready from the moment its queue-proxy says so until it starts
draining). The order of a replica's life is what keeps requests from being lost:

- start: app and queue-proxy, each on its own ports; when the queue-proxy's admin READY_PATH answers 200,
  the replica becomes a Prometheus scrape target and an endpoint of the activator (and gateway).
- scale down: first taken out of the endpoints (no new requests), then SIGTERM to the queue-proxy, which
  drains what it holds and exits; then the app is stopped; only then does it stop being scraped, so its last
  requests are still counted.
- failure: an app or queue-proxy that exits on its own is taken out at once, the other process stopped, and
  the replica replaced (with a growing delay if it never became ready, so a broken command does not spin).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from kapa.core import contract
from kapa.local.app_spec import AppSpec
from kapa.local.ports import LOOPBACK, PortAllocator
from kapa.local.processes import Child, Supervisor
from kapa.core.log import get_logger
from kapa.local.prometheus import ScrapeTarget
from kapa.core.settings import SidecarSettings, sidecar_settings
from kapa.core.services import Endpoint, ServiceEntry, ServiceKey
from scaler.decision import Decision

log = get_logger(__name__)

#: Local replicas drain quickly: a laptop demo should not wait Knative's 30 s per scale-down.
LOCAL_DRAIN_SECONDS = 2.0
READY_POLL_INTERVAL_S = 0.05
#: The app gets this long after its queue-proxy has exited (SIGTERM, then SIGKILL).
APP_STOP_GRACE_S = 5.0
#: Retry delays after a replica failed before becoming ready: 0.5 s doubling up to 30 s.
FIRST_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 30.0


class ReplicaState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


class EndpointSink(Protocol):
    """Something that routes to a service's ready replicas (the activator, the gateway)."""

    async def set_endpoints(self, key: ServiceKey, endpoints: Sequence[Endpoint]) -> None: ...


class ScrapeTargetSink(Protocol):
    """Something that tells Prometheus which queue-proxies to scrape (kapa.local.prometheus)."""

    def set_targets(self, targets: Iterable[ScrapeTarget]) -> None: ...


@dataclass(frozen=True)
class ReplicaPorts:
    app: int
    serving: int
    metrics: int
    admin: int


@dataclass(eq=False)
class Replica:
    name: str
    key: ServiceKey
    ports: ReplicaPorts
    state: ReplicaState = ReplicaState.STARTING
    #: Set once the queue-proxy answered ready; it is scraped from then until it has exited.
    scraped: bool = False
    drain_requested: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(LOOPBACK, self.ports.serving)


@dataclass(frozen=True)
class ReplicaCounts:
    """What the view shows about one service's replicas."""

    desired: int
    starting: int
    ready: int
    draining: int
    #: Replicas that exited on their own since start-up.
    failures: int


@dataclass
class _Service:
    entry: ServiceEntry
    app: AppSpec
    #: Knative's containerConcurrency and timeoutSeconds, from the kapa.dev annotations.
    sidecar: SidecarSettings
    desired: int = 0
    replicas: list[Replica] = field(default_factory=list)
    failures: int = 0
    consecutive_start_failures: int = 0
    retry_at: float = 0.0
    serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: One per endpoint sink (by its index).
    publish_locks: dict[int, asyncio.Lock] = field(default_factory=dict)
    retry_task: asyncio.Task[None] | None = None


async def _first_exit(*children: Child) -> None:
    await asyncio.wait([asyncio.ensure_future(child.process.wait()) for child in children],
                       return_when=asyncio.FIRST_COMPLETED)


class LocalBackend:
    """Runs each service's replicas as local processes; the scaler's Actuator, and the source of its ready pods."""

    def __init__(
        self,
        services: Mapping[ServiceKey, tuple[ServiceEntry, AppSpec]],
        supervisor: Supervisor,
        endpoint_sinks: Sequence[EndpointSink] = (),
        target_sink: ScrapeTargetSink | None = None,
        drain_s: float = LOCAL_DRAIN_SECONDS,
        ports: PortAllocator | None = None,
    ) -> None:
        self._services = {
            key: _Service(
                entry,
                app,
                # Rejected values are the scaler's to report (it logs every annotation problem once).
                sidecar_settings(entry.spec)[0],
            )
            for key, (entry, app) in services.items()
        }
        self._supervisor = supervisor
        self._endpoint_sinks = list(endpoint_sinks)
        self._target_sink = target_sink
        self._drain_s = drain_s
        self._ports = ports or PortAllocator()
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    # --- the scaler's side -------------------------------------------------------------------------

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        """Actuator: make each service's replica count follow its decision's desired_pods."""
        for key, decision in decisions.items():
            self.set_desired(key, decision.desired_pods)

    async def republish(self) -> None:
        """Send every service's ready replicas to every sink again (one of them restarted and knows nothing)."""
        await asyncio.gather(*(self._publish_endpoints(service) for service in self._services.values()))

    # --- control -------------------------------------------------------------------------------------

    @property
    def keys(self) -> list[ServiceKey]:
        return sorted(self._services)

    def counts(self, key: ServiceKey) -> ReplicaCounts:
        service = self._services[key]
        states = [replica.state for replica in service.replicas]
        return ReplicaCounts(
            desired=service.desired,
            starting=states.count(ReplicaState.STARTING),
            ready=states.count(ReplicaState.READY),
            draining=states.count(ReplicaState.DRAINING),
            failures=service.failures,
        )

    def replicas(self, key: ServiceKey) -> list[Replica]:
        return list(self._services[key].replicas)

    def set_desired(self, key: ServiceKey, desired: int) -> None:
        service = self._services.get(key)
        if service is None:
            log.warning("decision for a service the local backend does not run", service=str(key))
            return
        if desired != service.desired:
            log.info("desired replicas", service=str(key), desired=desired, was=service.desired)
        service.desired = max(0, desired)
        self._reconcile(service)

    def _reconcile(self, service: _Service) -> None:
        if self._closed:
            return
        live = [replica for replica in service.replicas if replica.state is not ReplicaState.DRAINING]
        missing = service.desired - len(live)
        if missing > 0:
            delay = service.retry_at - time.monotonic()
            if delay > 0:
                self._retry_later(service, delay)
                return
            for _ in range(missing):
                self._spawn(self._run_replica(service, self._new_replica(service)))
        elif missing < 0:
            # Replicas not yet serving go first (newest first), then the newest ready ones.
            victims = sorted(live, key=lambda r: (r.state is ReplicaState.READY, -r.started_at))[:-missing]
            for replica in victims:
                replica.state = ReplicaState.DRAINING
                replica.drain_requested.set()

    def _retry_later(self, service: _Service, delay: float) -> None:
        if service.retry_task is not None and not service.retry_task.done():
            return

        async def retry() -> None:
            await asyncio.sleep(delay)
            self._reconcile(service)

        service.retry_task = self._spawn(retry())

    def _new_replica(self, service: _Service) -> Replica:
        key = service.entry.spec.key
        ports = ReplicaPorts(*(self._ports.allocate() for _ in range(4)))
        replica = Replica(f"{key.namespace}-{key.name}-{next(service.serial)}", key, ports)
        service.replicas.append(replica)
        return replica

    def _spawn(self, coroutine: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- one replica's life ----------------------------------------------------------------------------

    def _queue_proxy_env(self, service: _Service, replica: Replica) -> dict[str, str]:
        entry, ports = service.entry, replica.ports
        return {
            contract.ENV_QUEUE_SERVING_PORT: str(ports.serving),
            contract.ENV_USER_PORT: str(ports.app),
            contract.ENV_METRICS_PORT: str(ports.metrics),
            contract.ENV_ADMIN_PORT: str(ports.admin),
            contract.ENV_SERVING_NAMESPACE: entry.spec.key.namespace,
            contract.ENV_SERVING_SERVICE: entry.spec.key.name,
            contract.ENV_CONTAINER_CONCURRENCY: str(service.sidecar.container_concurrency),
            contract.ENV_REVISION_TIMEOUT_SECONDS: f"{service.sidecar.timeout_s:g}",
            contract.ENV_DRAIN_SECONDS: str(self._drain_s),
            contract.ENV_SERVING_READINESS_PROBE: service.app.readiness_probe(ports.app),
            contract.ENV_BIND_ADDRESS: LOOPBACK,
        }

    async def _run_replica(self, service: _Service, replica: Replica) -> None:
        app: Child | None = None
        proxy: Child | None = None
        try:
            app = await self._supervisor.start(
                f"{replica.name}-app", service.app.argv(replica.ports.app), service.app.environment(replica.ports.app)
            )
            proxy = await self._supervisor.start(
                f"{replica.name}-queue-proxy",
                [sys.executable, "-m", "queue_proxy"],
                self._queue_proxy_env(service, replica),
            )
            became_ready = await self._serve(service, replica, app, proxy)
            # Out of the endpoints before anything stops, so no new request is sent to it.
            replica.state = ReplicaState.DRAINING
            await self._publish_endpoints(service)
            if replica.drain_requested.is_set():
                # The queue-proxy drains (finishes what it holds, waits for quiet) and exits on SIGTERM.
                await self._supervisor.stop(proxy, self._drain_s + service.sidecar.timeout_s)
            else:
                self._record_failure(service, replica, app, proxy, became_ready)
        finally:
            if proxy is not None:
                await self._supervisor.stop(proxy, 0.5)
            if app is not None:
                await self._supervisor.stop(app, APP_STOP_GRACE_S)
            with contextlib.suppress(ValueError):
                service.replicas.remove(replica)
            if replica.scraped:
                self._publish_targets()
            self._reconcile(service)

    async def _serve(self, service: _Service, replica: Replica, app: Child, proxy: Child) -> bool:
        """Wait for the replica to turn ready and announce it; return (whether it did) once it must go: a drain
        was requested or one of its processes exited."""
        exited = asyncio.ensure_future(_first_exit(app, proxy))
        drain = asyncio.ensure_future(replica.drain_requested.wait())
        ready = asyncio.ensure_future(self._wait_ready(replica))
        try:
            await asyncio.wait([ready, exited, drain], return_when=asyncio.FIRST_COMPLETED)
            if not ready.done() or exited.done() or drain.done():
                return False
            service.consecutive_start_failures = 0
            replica.state = ReplicaState.READY
            replica.scraped = True
            log.info("replica ready", service=str(replica.key), replica=replica.name, endpoint=str(replica.endpoint),
                     start_s=round(time.monotonic() - replica.started_at, 2))
            self._publish_targets()
            await self._publish_endpoints(service)
            await asyncio.wait([exited, drain], return_when=asyncio.FIRST_COMPLETED)
            return True
        finally:
            for future in (ready, exited, drain):
                future.cancel()

    def _record_failure(
        self, service: _Service, replica: Replica, app: Child, proxy: Child, became_ready: bool
    ) -> None:
        service.failures += 1
        which = app if not app.running else proxy
        log.error("replica process exited, replacing the replica", service=str(replica.key), replica=replica.name,
                  process=which.name, returncode=which.process.returncode, log=str(which.log_path))
        if not became_ready:
            service.consecutive_start_failures += 1
            delay = min(MAX_RETRY_DELAY_S, FIRST_RETRY_DELAY_S * 2 ** (service.consecutive_start_failures - 1))
            service.retry_at = time.monotonic() + delay

    async def _wait_ready(self, replica: Replica) -> None:
        url = f"http://{LOOPBACK}:{replica.ports.admin}{contract.READY_PATH}"
        session = self._session()
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(READY_POLL_INTERVAL_S)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    # --- telling the others ------------------------------------------------------------------------------

    async def _publish_endpoints(self, service: _Service) -> None:
        """Send the service's ready replicas to every sink, each on its own: one that is restarting (its calls
        retry until it is back) holds up no other."""
        sinks = enumerate(self._endpoint_sinks)
        await asyncio.gather(*(self._publish_to(index, sink, service) for index, sink in sinks))

    async def _publish_to(self, index: int, sink: EndpointSink, service: _Service) -> None:
        # Serialised per service and sink and read inside the lock, so the last call always sends the current set.
        async with service.publish_locks.setdefault(index, asyncio.Lock()):
            ready = sorted(r.endpoint for r in service.replicas if r.state is ReplicaState.READY)
            await sink.set_endpoints(service.entry.spec.key, ready)

    def _publish_targets(self) -> None:
        if self._target_sink is None:
            return
        targets = [
            ScrapeTarget(f"{LOOPBACK}:{replica.ports.metrics}")
            for key, service in sorted(self._services.items())
            for replica in service.replicas
            if replica.scraped
        ]
        self._target_sink.set_targets(targets)

    # --- shutdown ---------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every replica at once, without draining: `kapa up` is going away with its entry points."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
