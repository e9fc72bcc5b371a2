"""Everything `kapa up` runs, started in order and stopped in reverse: Prometheus, the scaler (in this
process, with its HTTP API), the activator, optionally the gateway with Envoy, and the services' replicas.

Order matters for not losing a request: Prometheus first (the scaler reads it), then the scaler's HTTP API
(the activator pokes it), then the activator and the gateway (the backend registers replicas with them), and
only then the scaler's loop, whose first tick decides the initial scale. On the way out the scaler stops
deciding first, then the replicas and the entry points go, and last the Supervisor kills whatever process
group is still there. Logs of every part stay in the work directory's logs/ for after the run.

Prometheus scrapes the activator from its own start, and the scaler's loop starts only once Prometheus holds
two samples of the activator's scaling counters for every service (rate() needs two; this costs about 5 s of
start-up, Prometheus's discovery batch). The activator exports them for every service it knows, traffic or
not, so from the first tick each service has data: a replica that just turned ready, whose own series appear
only 5-7 s later (Prometheus's discovery hands new targets to the scrapers in 5 s batches), does not turn the
data stale, and the time requests were held in the first cold start counts for scaling. This is exact without
Envoy, where every request goes through the activator; with Envoy in "serve" mode, requests sent straight to a
replica count only once Prometheus scrapes it, as for any new replica of a service that already has some. The
activator's other metrics (held requests gauge, cold-start histogram) are in the 15 s job, whose first scrape
of the activator comes at a target-dependent offset of up to 15 s: a cold start before it is missing from
their rates. The scaling decisions do not use them, so `kapa up` does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from kapa import contract
from kapa.local.app_spec import AppSpec
from kapa.local.backend import LOCAL_DRAIN_SECONDS, EndpointSink, LocalBackend
from kapa.local.ports import LOOPBACK, PortAllocator
from kapa.local.processes import Child, Supervisor
from kapa.local.registrations import ActivatorEndpoints, GatewayRoutes
from kapa.log import get_logger
from kapa.prometheus_server import DEFAULT_BINARY, PrometheusServer, ScrapeTarget
from kapa.services import ServiceEntry, ServiceKey
from scaler.catalog import StaticCatalog
from scaler.config import AutoscalerConfig
from scaler.decision import Decision
from scaler.http_api import make_app
from scaler.loop import Actuator, Scaler
from scaler.prometheus_source import PrometheusMetrics, PrometheusQueryError

log = get_logger(__name__)

STOP_GRACE_S = 5.0
START_TIMEOUT_S = 30.0
#: After Prometheus exits, wait this long before starting it again (on the same port, storage and targets).
PROMETHEUS_RESTART_DELAY_S = 3.0
#: How long the start waits for Prometheus to have scraped the activator twice (about 7 s at most is normal).
FIRST_SCRAPES_TIMEOUT_S = 20.0


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
        # The activator (and gateway) read the same services file as we do.
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
        activator_target = ScrapeTarget(f"{LOOPBACK}:{self.activator_admin_port}")
        self.prometheus = PrometheusServer(
            port=self.ports.allocate(), workdir=self.workdir / "prometheus", targets=[activator_target],
            log_path=self.log_dir / "prometheus.log", binary=options.prometheus_binary,
            scaler_address=f"{LOOPBACK}:{self.scaler_http_port}",
        )
        self.activator_endpoints = ActivatorEndpoints(f"http://{LOOPBACK}:{self.activator_admin_port}")
        self.gateway_routes = GatewayRoutes(f"http://{LOOPBACK}:{self.gateway_admin_port}") if options.envoy else None
        sinks: list[EndpointSink] = [self.activator_endpoints]
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
        # The backend is both the exact ready-pod counter and the actuator: it knows every replica it runs.
        # With Envoy, the gateway also follows each decision's routing mode.
        actuators: list[Actuator] = [self.backend, *([self.gateway_routes] if self.gateway_routes else [])]
        catalog = StaticCatalog(entry.spec for entry in self.entries)
        self.scaler = Scaler(options.config, catalog, self.metrics, self.backend, actuators=actuators)
        self._scaler_http: web.AppRunner | None = None
        self._prometheus_watch: asyncio.Task[None] | None = None
        self.activator: Child | None = None
        self.gateway: Child | None = None

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
        return self.scaler.latest(key)

    async def start(self) -> None:
        await self.prometheus.start()
        # The scaler answers pokes before the activator can send one.
        self._scaler_http = web.AppRunner(make_app(self.scaler), access_log=None)
        await self._scaler_http.setup()
        await web.TCPSite(self._scaler_http, LOOPBACK, self.scaler_http_port).start()
        self.activator = await self.supervisor.start(
            "activator",
            [sys.executable, "-m", "activator", "--services", str(self.services_file),
             "--port", str(self.activator_port), "--admin-port", str(self.activator_admin_port),
             "--host", LOOPBACK, "--scaler-url", self.scaler_url,
             # Nothing locally watches the activator's readiness before it stops taking connections.
             "--drain-delay", "0"],
        )
        await _wait_http(f"http://{LOOPBACK}:{self.activator_admin_port}{contract.READY_PATH}", self.activator)
        if self.options.envoy:
            await self._start_gateway()
        await self._wait_activator_scraped()
        self.scaler.start()
        self._prometheus_watch = asyncio.get_running_loop().create_task(self._keep_prometheus_running())

    async def _wait_activator_scraped(self, timeout_s: float = FIRST_SCRAPES_TIMEOUT_S) -> None:
        """Wait until Prometheus holds two samples of the activator's concurrency counter for every service, so
        the scaler's first tick already reads data. If that takes too long, start anyway: the scaler then
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

    async def _keep_prometheus_running(self) -> None:
        """Restart Prometheus when it exits. Meanwhile the scaler has no data: it holds every decision and
        says so (stale), so an outage never reads as zero traffic; scaling resumes once it answers again."""
        while True:
            await asyncio.sleep(1.0)
            if self.prometheus.running:
                continue
            log.error("prometheus exited; starting it again", delay_s=PROMETHEUS_RESTART_DELAY_S,
                      log=str(self.prometheus.log_path))
            await asyncio.sleep(PROMETHEUS_RESTART_DELAY_S)
            try:
                await self.prometheus.start()
            except (RuntimeError, TimeoutError, OSError) as error:
                log.error("prometheus did not start again; will retry", error=str(error))

    async def _start_gateway(self) -> None:
        """The xDS control plane and the Envoy it runs; every service starts routed to the activator."""
        self.gateway = await self.supervisor.start(
            "gateway",
            [sys.executable, "-m", "gateway", "--services", str(self.services_file),
             "--activator", f"{LOOPBACK}:{self.activator_port}", "--xds-host", LOOPBACK,
             "--xds-port", str(self.xds_port), "--admin-port", str(self.gateway_admin_port),
             "--listen-host", LOOPBACK, "--listen-port", str(self.entry_port), "--run-envoy",
             "--envoy-admin-port", str(self.envoy_admin_port)],
        )
        await _wait_http(f"http://{LOOPBACK}:{self.gateway_admin_port}{contract.READY_PATH}", self.gateway)
        await _wait_http(f"http://{LOOPBACK}:{self.envoy_admin_port}/ready", self.gateway)

    def broken(self) -> str | None:
        """Which part `kapa up` cannot run without has exited, with where its log is; None if all run.
        (Prometheus is not one of them: it is restarted, see _keep_prometheus_running.)"""
        for child in (self.activator, self.gateway):
            if child is not None and not child.running:
                return f"{child.name} exited with {child.process.returncode}; its log: {child.log_path}"
        return None

    async def stop(self) -> None:
        if self._prometheus_watch is not None:
            self._prometheus_watch.cancel()
            await asyncio.gather(self._prometheus_watch, return_exceptions=True)
        await self.scaler.stop()
        if self._scaler_http is not None:
            await self._scaler_http.cleanup()
        await self.metrics.close()
        await self.backend.close()
        await self.activator_endpoints.close()
        if self.gateway_routes is not None:
            await self.gateway_routes.close()
        if self.gateway is not None:
            await self.supervisor.stop(self.gateway, STOP_GRACE_S)
        if self.activator is not None:
            await self.supervisor.stop(self.activator, STOP_GRACE_S)
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
