"""Everything `kapa up` runs, started in order and stopped in reverse: Prometheus, the scaler, the activator,
optionally the gateway with Envoy, and the services' replicas, each a process of its own.

Order matters for not losing a request: Prometheus first (the scaler reads it), then the scaler (the activator
pokes it), then the activator and the gateway (the backend registers replicas with them), and only then are
the scaler's ready pods sent, without which it decides nothing: its first decision sets the initial scale.
On the way out the scaler stops deciding first, then the replicas and the entry points go, and last the
Supervisor kills whatever process group is still there. Logs of every part stay in the work directory's logs/
for after the run.

Supervision, as a kubelet's restartPolicy Always: Prometheus, the scaler, the activator and the gateway are
each started again when they exit, after a backoff (processes.Keeper), and are then brought up to date: the
backend sends them the ready replicas again, the gateway gets the routing modes again. Meanwhile nothing is
decided from missing data: without Prometheus the scaler holds every decision and says so (stale); without
the scaler the replicas stay as they are; without the activator Envoy still serves the replicas it knows
(services in serve mode). A replica's processes are the backend's to replace (kapa.local.backend).

Prometheus scrapes the activator from its own start, and the scaler's ready pods are sent only once Prometheus
holds two samples of the activator's scaling counters for every service (rate() needs two; this costs about
5 s of start-up, Prometheus's discovery batch). The activator exports them for every service it knows, traffic
or not, so from the first decision each service has data: a replica that just turned ready, whose own series
appear only 5-7 s later (Prometheus's discovery hands new targets to the scrapers in 5 s batches), does not
turn the data stale, and the time requests were held in the first cold start counts for scaling. This is
exact without Envoy, where every request goes through the activator; with Envoy in "serve" mode, requests sent
straight to a replica count only once Prometheus scrapes it, as for any new replica of a service that already
has some. The activator's other metrics (held requests gauge, cold-start histogram) are in the 15 s job, whose
first scrape of the activator comes at a target-dependent offset of up to 15 s: a cold start before it is
missing from their rates. The scaling decisions do not use them, so `kapa up` does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from kapa.core import contract
from kapa.local.app_spec import AppSpec
from kapa.local.backend import LOCAL_DRAIN_SECONDS, EndpointSink, LocalBackend
from kapa.local.ports import LOOPBACK, PortAllocator
from kapa.local.processes import Child, Keeper, Supervisor
from kapa.local.registrations import ActivatorEndpoints, GatewayRoutes, ScalerReadyPods
from kapa.local.scaler_process import DECISIONS_PATH, decisions_from_json
from kapa.core.log import get_logger
from kapa.local.prometheus import DEFAULT_BINARY, PrometheusServer, ScrapeTarget
from kapa.core.services import ServiceEntry, ServiceKey
from kapa.core.settings import AutoscalerConfig
from scaler.decision import Decision
from scaler.prometheus_source import PrometheusMetrics, PrometheusQueryError

log = get_logger(__name__)

STOP_GRACE_S = 5.0
START_TIMEOUT_S = 30.0
#: How long the start waits for Prometheus to have scraped the activator twice (about 7 s at most is normal).
FIRST_SCRAPES_TIMEOUT_S = 20.0
#: How often the keeper of Prometheus (not a Supervisor child) looks whether it still runs.
PROMETHEUS_POLL_S = 0.2
SCALER = "scaler"
ACTIVATOR = "activator"
GATEWAY = "gateway"
PROMETHEUS = "prometheus"


@dataclass(frozen=True)
class StackOptions:
    """What `kapa up`'s flags decide."""

    #: None: the embedded default (the sample app as default/hello).
    services_file: Path | None
    config: AutoscalerConfig = field(default_factory=AutoscalerConfig.default)
    entry_port: int = 0
    envoy: bool = False
    drain_s: float = LOCAL_DRAIN_SECONDS
    prometheus_binary: str = DEFAULT_BINARY


class _Targets:
    """Prometheus scrapes the activator always (from its start), and whatever replicas the backend says (the
    scaler, in a job of its own, is in the config itself)."""

    def __init__(self, prometheus: PrometheusServer, fixed: Sequence[ScrapeTarget]) -> None:
        self._prometheus = prometheus
        self._fixed = tuple(fixed)

    def set_targets(self, targets: Iterable[ScrapeTarget]) -> None:
        self._prometheus.set_targets([*self._fixed, *targets])


class LocalStack:
    """The local mode's parts: construct, `await start()`, and always `await stop()`, even after a failed start."""

    def __init__(
        self, entries: Sequence[ServiceEntry], apps: dict[ServiceKey, AppSpec], options: StackOptions,
        default_services_text: str,
    ) -> None:
        self.entries = list(entries)
        self.options = options
        self.workdir = Path(tempfile.mkdtemp(prefix="kapa-up-"))
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The scaler, the activator (and gateway) read the same services file as we do.
        self.services_file = options.services_file or self.workdir / "services.yaml"
        if options.services_file is None:
            self.services_file.write_text(default_services_text)
        self.supervisor = Supervisor(self.log_dir)
        self.ports = PortAllocator()
        self.entry_port = options.entry_port or self.ports.allocate()
        # With Envoy in front, Envoy listens on the entry port and the activator on a port of its own.
        self.activator_port = self.ports.allocate() if options.envoy else self.entry_port
        self.gateway_admin_port = self.ports.allocate()
        self.xds_port = self.ports.allocate()
        self.envoy_admin_port = self.ports.allocate()
        self.activator_admin_port = self.ports.allocate()
        self.scaler_http_port = self.ports.allocate()
        #: kapa up's own control port, where the scaler hands over its decisions.
        self.control_port = self.ports.allocate()
        activator_target = ScrapeTarget(f"{LOOPBACK}:{self.activator_admin_port}")
        self.prometheus = PrometheusServer(
            port=self.ports.allocate(), workdir=self.workdir / "prometheus", targets=[activator_target],
            log_path=self.log_dir / "prometheus.log", binary=options.prometheus_binary,
            scaler_address=f"{LOOPBACK}:{self.scaler_http_port}",
        )
        self.activator_endpoints = ActivatorEndpoints(f"http://{LOOPBACK}:{self.activator_admin_port}")
        self.scaler_ready_pods = ScalerReadyPods(self.scaler_url)
        self.gateway_routes = GatewayRoutes(f"http://{LOOPBACK}:{self.gateway_admin_port}") if options.envoy else None
        sinks: list[EndpointSink] = [self.activator_endpoints, self.scaler_ready_pods]
        if self.gateway_routes:
            sinks.append(self.gateway_routes)
        self.backend = LocalBackend(
            {entry.spec.key: (entry, apps[entry.spec.key]) for entry in self.entries},
            self.supervisor,
            endpoint_sinks=sinks,
            target_sink=_Targets(self.prometheus, [activator_target]),
            drain_s=options.drain_s,
            ports=self.ports,
        )
        self.metrics = PrometheusMetrics(self.prometheus.url)
        self._decisions: dict[ServiceKey, Decision] = {}
        self._control: web.AppRunner | None = None
        #: The running process of each part kapa up keeps (SCALER, ACTIVATOR, GATEWAY).
        self._parts: dict[str, Child] = {}
        self.keepers: list[Keeper] = []
        self._keeping: list[asyncio.Task[None]] = []

    @property
    def entry_url(self) -> str:
        return f"http://{LOOPBACK}:{self.entry_port}"

    @property
    def activator_metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.activator_admin_port}{contract.METRICS_PATH}"

    @property
    def traffic_path(self) -> str:
        if self.options.envoy:
            return "Envoy sends it to the replicas, or to the activator when the scaler says proxy"
        return "all through the activator: it forwards to ready replicas, holds requests at zero"

    @property
    def scaler_url(self) -> str:
        return f"http://{LOOPBACK}:{self.scaler_http_port}"

    def decision(self, key: ServiceKey) -> Decision | None:
        """The scaler's last decision for the service, as handed over (None before the first)."""
        return self._decisions.get(key)

    def restarts(self) -> Mapping[str, int]:
        """How often each kept part has been started again after it exited."""
        return {keeper.name: keeper.restarts for keeper in self.keepers}

    async def start(self) -> None:
        await self.prometheus.start()
        # Decisions are taken before the scaler can make one.
        control = web.Application()
        control.router.add_put(DECISIONS_PATH, self._take_decisions)
        self._control = web.AppRunner(control, access_log=None)
        await self._control.setup()
        await web.TCPSite(self._control, LOOPBACK, self.control_port).start()
        # The scaler answers pokes before the activator can send one.
        await self._start_scaler()
        await self._start_activator()
        if self.options.envoy:
            await self._start_gateway()
        await self._wait_activator_scraped()
        await self.backend.republish()  # the scaler's first ready pods: from now on it decides
        self.keepers = [
            Keeper(PROMETHEUS, self.prometheus.start, self._prometheus_exit),
            Keeper(SCALER, self._restart_scaler, lambda: self._part_exit(SCALER)),
            Keeper(ACTIVATOR, self._restart_activator, lambda: self._part_exit(ACTIVATOR)),
        ]
        if self.options.envoy:
            self.keepers.append(Keeper(GATEWAY, self._restart_gateway, lambda: self._part_exit(GATEWAY)))
        loop = asyncio.get_running_loop()
        self._keeping = [loop.create_task(keeper.run(), name=f"keep-{keeper.name}") for keeper in self.keepers]

    async def _take_decisions(self, request: web.Request) -> web.Response:
        """The scaler's actuation: replica counts to the backend and, with Envoy, routing modes to the gateway."""
        decisions = decisions_from_json(await request.json())
        self._decisions.update(decisions)
        await self.backend.apply(decisions)
        if self.gateway_routes is not None:
            await self.gateway_routes.apply(decisions)
        return web.Response(status=204)

    async def _wait_activator_scraped(self, timeout_s: float = FIRST_SCRAPES_TIMEOUT_S) -> None:
        """Wait until Prometheus holds two samples of the activator's concurrency counter for every service, so
        the scaler's first decision already reads data. If that takes too long, start anyway: the scaler then
        says "stale" until the data comes, which is true and loses nothing."""
        series = f'{contract.CONCURRENCY_SECONDS}{{{contract.LABEL_COMPONENT}="{contract.COMPONENT_ACTIVATOR}"}}'
        promql = f"count_over_time({series}[{5 * contract.SCALING_SCRAPE_INTERVAL_S}s]) >= 2"
        wanted = {entry.spec.key for entry in self.entries}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, PrometheusQueryError):
                if wanted <= (await self.metrics.query(promql, time.time())).keys():
                    return
            await asyncio.sleep(0.2)
        log.warning("prometheus has not scraped the activator yet; starting the scaler anyway (data stale until it "
                    "has)", waited_s=timeout_s, log=str(self.prometheus.log_path))

    async def _prometheus_exit(self) -> None:
        while self.prometheus.running:
            await asyncio.sleep(PROMETHEUS_POLL_S)

    async def _part_exit(self, name: str) -> int:
        return await self._parts[name].process.wait()

    async def _start_part(self, name: str, argv: Sequence[str], ready_urls: Sequence[str]) -> None:
        """Start one of the processes kapa up keeps and wait until each of `ready_urls` answers 200. One that
        does not get ready is stopped, so its keeper starts it afresh."""
        child = self._parts[name] = await self.supervisor.start(name, argv)
        try:
            for url in ready_urls:
                await _wait_http(url, child)
        except BaseException:
            await self.supervisor.stop(child, STOP_GRACE_S)
            raise

    async def _start_scaler(self) -> None:
        config_json = json.dumps(dataclasses.asdict(self.options.config))
        await self._start_part(
            SCALER,
            [sys.executable, "-m", "kapa.local.scaler_process", "--services", str(self.services_file),
             "--config-json", config_json, "--prometheus-url", self.prometheus.url,
             "--port", str(self.scaler_http_port),
             "--decisions-url", f"http://{LOOPBACK}:{self.control_port}{DECISIONS_PATH}"],
            [f"{self.scaler_url}/healthz"],
        )

    async def _start_activator(self) -> None:
        await self._start_part(
            ACTIVATOR,
            [sys.executable, "-m", "activator", "--services", str(self.services_file),
             "--port", str(self.activator_port), "--admin-port", str(self.activator_admin_port),
             "--host", LOOPBACK, "--scaler-url", self.scaler_url,
             # Nothing locally watches the activator's readiness before it stops taking connections.
             "--drain-delay", "0"],
            [f"http://{LOOPBACK}:{self.activator_admin_port}{contract.READY_PATH}"],
        )

    async def _start_gateway(self) -> None:
        """The xDS control plane and the Envoy it runs; every service starts routed to the activator."""
        await self._start_part(
            GATEWAY,
            [sys.executable, "-m", "gateway", "--services", str(self.services_file),
             "--activator", f"{LOOPBACK}:{self.activator_port}", "--xds-host", LOOPBACK,
             "--xds-port", str(self.xds_port), "--admin-port", str(self.gateway_admin_port),
             "--listen-host", LOOPBACK, "--listen-port", str(self.entry_port), "--run-envoy",
             "--envoy-admin-port", str(self.envoy_admin_port)],
            [f"http://{LOOPBACK}:{self.gateway_admin_port}{contract.READY_PATH}",
             f"http://{LOOPBACK}:{self.envoy_admin_port}/ready"],
        )

    async def _restart_scaler(self) -> None:
        await self._start_scaler()
        await self.backend.republish()

    async def _restart_activator(self) -> None:
        await self._start_activator()
        await self.backend.republish()

    async def _restart_gateway(self) -> None:
        assert self.gateway_routes is not None
        await self._start_gateway()
        await self.backend.republish()
        self.gateway_routes.forget_modes()
        await self.gateway_routes.apply(self._decisions)

    async def stop(self) -> None:
        for task in self._keeping:
            task.cancel()
        await asyncio.gather(*self._keeping, return_exceptions=True)
        if SCALER in self._parts:  # no decision while the rest goes
            await self.supervisor.stop(self._parts[SCALER], STOP_GRACE_S)
        if self._control is not None:
            await self._control.cleanup()
        await self.metrics.close()
        await self.backend.close()
        await self.activator_endpoints.close()
        await self.scaler_ready_pods.close()
        if self.gateway_routes is not None:
            await self.gateway_routes.close()
        for name in (GATEWAY, ACTIVATOR):
            if name in self._parts:
                await self.supervisor.stop(self._parts[name], STOP_GRACE_S)
        await self.prometheus.stop()
        await self.supervisor.stop_all(1.0)
        # Prometheus's storage is only useful while running; the logs are kept.
        shutil.rmtree(self.workdir / "prometheus", ignore_errors=True)


async def _wait_http(url: str, child: Child, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until `url` answers 200; fail early, with the child's log, if the child exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while True:
            if not child.running:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}; "
                                   f"its log: {child.log_path}\n{_tail(child.log_path)}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            if loop.time() > deadline:
                raise TimeoutError(f"{child.name} not ready at {url} after {timeout_s}s; its log: {child.log_path}")
            await asyncio.sleep(0.05)


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
