"""The metrics pipeline measured: a real Prometheus scraping N pods every second, and the scaler ticking on it.

    python -m benchmarks.metrics_pipeline [--pods 500,2000,5000] [--services 1000] [--measure 30s]

For each N: an exporter farm (benchmarks.exporter_farm: the queue-proxy's own exposition, one loopback port
per simulated pod, pods spread over the services) is scraped by the Prometheus the local mode runs (the
scaling job at 1 s, the rest at 15 s: kapa.local.prometheus). Once every target is up, the scaler's loop
(the real `Scaler` with `PrometheusMetrics`, over all the services, no actuator) ticks on its usual 2 s
boundaries for the measured period, and halfway through one service's pods go from 1 to 20 requests in
flight each. Printed per N:

- Prometheus CPU (cores used, and per 1,000 pods) and resident memory (and per 1,000 pods);
- whether it keeps up: how many targets are up, and the 99th percentile of its actual scrape interval for
  the 1 s job (1.0 s when it does);
- the scaler's tick duration and the latency of its batched queries (median and max);
- the lag from the step at the pods to the first decision that follows it (Knative's panic reacts to it).

The farm's own CPU is printed too: on a small machine it competes with Prometheus, and the figures are
those of this machine, in one run. Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.exporter_farm import NAMESPACE, service_name
from benchmarks.harness import cpu_seconds, rss_mb, scaler_ticks, scaling_targets_up
from kapa.core import contract
from kapa.local.prometheus import PrometheusServer, ScrapeTarget
from kapa.core.services import ServiceKey, ServiceSpec
from scaler.catalog import StaticCatalog
from kapa.core.settings import AutoscalerConfig, parse_duration_s
from scaler.loop import QUERY_DELAY_S, Scaler
from scaler.prometheus_source import PrometheusMetrics

#: Every service aims at 10 in flight per pod (Knative's autoscale sample), with Knative's default windows.
ANNOTATIONS = {contract.knative_annotation("target"): "10"}
STEP_IN_FLIGHT = 20
#: How long Prometheus may take to find and scrape every target (it hands new targets over in 5 s batches).
TARGETS_UP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Result:
    pods: int
    services: int
    targets_up: int
    prometheus_cores: float
    prometheus_rss_mb: float
    farm_cores: float
    scrape_interval_p99_s: float | None
    tick_ms: tuple[float, float]
    query_ms: tuple[float, float]
    step_to_decision_s: float | None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _scrape_interval_p99(prometheus: PrometheusServer) -> float | None:
    """Prometheus's own summary of how far apart its 1 s scrapes really were."""
    pattern = re.compile(r'prometheus_target_interval_length_seconds\{interval="1s",quantile="0.99"\} (\S+)')
    found = pattern.search(_get(f"{prometheus.url}/metrics"))
    return float(found.group(1)) if found and found.group(1) != "NaN" else None


async def _wait_targets_up(prometheus: PrometheusServer, pods: int) -> int:
    """How many scaling targets are up once all are, or TARGETS_UP_TIMEOUT_S has passed: fewer means this
    Prometheus cannot scrape that many pods within the 1 s timeout (a figure, not a failure)."""
    deadline = time.monotonic() + TARGETS_UP_TIMEOUT_S
    while (up := await asyncio.to_thread(scaling_targets_up, prometheus.url)) < pods and time.monotonic() < deadline:
        await asyncio.sleep(1)
    return up


async def _tick_until(scaler: Scaler, metrics: PrometheusMetrics, until: float,
                      ticks: list[float], queries: list[float]) -> None:
    """Tick as the scaler's loop does (2 s boundaries, QUERY_DELAY_S after), timing ticks and queries."""
    observe = metrics.observe

    async def timed_observe(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return await observe(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            queries.append((time.perf_counter() - started) * 1000)

    metrics.observe = timed_observe  # type: ignore[method-assign]
    async for at in scaler_ticks(until):
        started = time.perf_counter()
        await scaler.tick(at)
        ticks.append((time.perf_counter() - started) * 1000)


def _first_reaction(scaler: Scaler, key: ServiceKey, stepped_at: float, before: int) -> float | None:
    """Seconds from the step to the first decision above the count before it (its query came QUERY_DELAY_S
    after its tick time)."""
    times = [r.at for r in scaler.history(key) if r.at >= stepped_at and r.decision.desired_pods > before]
    return min(times) + QUERY_DELAY_S - stepped_at if times else None


async def run_one(pods: int, services: int, measure_s: float, workdir: Path) -> Result:
    farm = subprocess.Popen([sys.executable, "-m", "benchmarks.exporter_farm", "--pods", str(pods),
                             "--services", str(services)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert farm.stdin is not None and farm.stdout is not None
    try:
        ports = json.loads(farm.stdout.readline())["ports"]
        prometheus = PrometheusServer(workdir=workdir / f"prometheus-{pods}",
                                      targets=[ScrapeTarget(f"127.0.0.1:{port}") for port in ports])
        await prometheus.start()
        try:
            targets_up = await _wait_targets_up(prometheus, pods)
            await asyncio.sleep(10)  # a stable window's worth of samples is not needed; a few are
            catalog = StaticCatalog([ServiceSpec(ServiceKey(NAMESPACE, service_name(i)), ANNOTATIONS)
                                     for i in range(services)])
            metrics = PrometheusMetrics(prometheus.url, timeout_s=10)
            scaler = Scaler(AutoscalerConfig.default(), catalog, metrics, ready_pods=metrics, history_length=100)
            ticks: list[float] = []
            queries: list[float] = []
            assert prometheus.pid is not None
            cpu_prometheus, cpu_farm, started = cpu_seconds(prometheus.pid), cpu_seconds(farm.pid), time.monotonic()
            end = time.time() + measure_s
            await _tick_until(scaler, metrics, end - measure_s / 2, ticks, queries)
            stepped = ServiceKey(NAMESPACE, service_name(0))
            latest = scaler.latest(stepped)
            before = latest.desired_pods if latest is not None else 0
            farm.stdin.write(f"step 0 {STEP_IN_FLIGHT}\n")
            farm.stdin.flush()
            stepped_at = float(farm.stdout.readline().split()[1])
            await _tick_until(scaler, metrics, end, ticks, queries)
            elapsed = time.monotonic() - started
            prometheus_cores = (cpu_seconds(prometheus.pid) - cpu_prometheus) / elapsed
            farm_cores = (cpu_seconds(farm.pid) - cpu_farm) / elapsed
            result = Result(
                pods, services, targets_up, prometheus_cores, rss_mb(prometheus.pid), farm_cores,
                _scrape_interval_p99(prometheus),
                (statistics.median(ticks), max(ticks)), (statistics.median(queries), max(queries)),
                _first_reaction(scaler, stepped, stepped_at, before),
            )
            await metrics.close()
            return result
        finally:
            await prometheus.close()
    finally:
        farm.stdin.close()
        farm.terminate()
        farm.wait(timeout=10)


def report(results: list[Result]) -> str:
    lines = [
        f"{'pods':>6} {'services':>8} {'up':>6} {'prom cores':>10} {'per 1k pods':>11} {'prom RSS MB':>11} {'per 1k pods':>11} "
        f"{'scrape p99 s':>12} {'tick ms p50/max':>16} {'query ms p50/max':>17} {'step->decision s':>16} "
        f"{'farm cores':>10}",
    ]
    for r in results:
        per_k = 1000 / r.pods
        interval = f"{r.scrape_interval_p99_s:.2f}" if r.scrape_interval_p99_s is not None else "-"
        lag = f"{r.step_to_decision_s:.1f}" if r.step_to_decision_s is not None else "none"
        lines.append(
            f"{r.pods:>6} {r.services:>8} {r.targets_up:>6} {r.prometheus_cores:>10.2f} {r.prometheus_cores * per_k:>11.2f} "
            f"{r.prometheus_rss_mb:>11.0f} {r.prometheus_rss_mb * per_k:>11.0f} {interval:>12} "
            f"{r.tick_ms[0]:>7.0f}/{r.tick_ms[1]:<8.0f} {r.query_ms[0]:>8.0f}/{r.query_ms[1]:<8.0f} {lag:>16} "
            f"{r.farm_cores:>10.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", default="500,2000,5000", help="comma-separated pod counts, one run each")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--measure", default="30s", help="measured period per run (ticks every 2 s)")
    args = parser.parse_args(argv)
    measure_s = parse_duration_s(args.measure)
    results = []
    with tempfile.TemporaryDirectory(prefix="kapa-pipeline-") as workdir:
        for pods in (int(p) for p in args.pods.split(",")):
            result = asyncio.run(run_one(pods, args.services, measure_s, Path(workdir)))
            results.append(result)
            print(report([result]).splitlines()[-1] if len(results) > 1 else report([result]), flush=True)
    print("\n" + report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
