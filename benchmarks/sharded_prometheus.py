"""Beyond one Prometheus: the scaler's decisions through Thanos Query over two hashmod shards, against one
Prometheus scraping everything, tick by tick.

    bash scripts/build-thanos.sh        # once: Thanos from its Go module into ~/.cache/kapa/thanos-v0.42.4
    python -m benchmarks.sharded_prometheus [--pods 400] [--services 100] [--measure 40s]

An exporter farm (benchmarks.exporter_farm: the queue-proxy's own exposition, one loopback port per pod)
is scraped by three Prometheus servers with Kapa's own scrape jobs (kapa.local.prometheus.scrape_configs):
one scraping every pod, and two shards that each keep the pods whose address hashes to them (`hashmod`
relabelling, modulus 2, the way an operator splits one Prometheus) and carry an external label `shard`.
A Thanos sidecar beside each shard serves it over the Store API and one Thanos Query fans the scaler's
PromQL out to both. Two `Scaler`s over the same 1,000-style catalog, one reading the single Prometheus and
one reading Thanos Query, tick at the same 2 s instants; halfway through, a quarter of the services step
from their steady load to four times it. Printed: decisions compared, identical ones, the largest difference
between the observed values, and the query latency through each path. Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

from benchmarks.exporter_farm import NAMESPACE, service_name
from benchmarks.harness import free_port, scaler_ticks, scaling_targets_up, started, wait_until_answering
from kapa.core import contract
from kapa.local.prometheus import DEFAULT_BINARY, ScrapeTarget, scrape_configs, write_targets
from kapa.core.services import ServiceKey, ServiceSpec
from scaler.catalog import StaticCatalog
from kapa.core.settings import AutoscalerConfig, parse_duration_s
from scaler.decision import Decision
from scaler.loop import Scaler
from scaler.prometheus_source import PrometheusMetrics

THANOS = Path(os.environ.get("KAPA_CACHE", Path.home() / ".cache" / "kapa")) / "thanos-v0.42.4" / "bin" / "thanos"
SHARDS = 2
ANNOTATIONS = {contract.knative_annotation("target"): "10"}


def prometheus_config(targets_file: Path, shard: int | None) -> dict[str, object]:
    """Kapa's scrape jobs over a file of targets; for a shard, only the targets whose address hashes to it."""
    discovery: dict[str, object] = {"file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}]}
    config: dict[str, object] = {"global": {"scrape_interval": "15s"}}
    if shard is not None:
        discovery["relabel_configs"] = [
            {"source_labels": ["__address__"], "modulus": SHARDS, "target_label": "__tmp_shard", "action": "hashmod"},
            {"source_labels": ["__tmp_shard"], "regex": str(shard), "action": "keep"},
        ]
        config["global"] = {"scrape_interval": "15s", "external_labels": {"shard": str(shard)}}
    config["scrape_configs"] = scrape_configs(discovery)
    return config


def start_prometheus(workdir: Path, targets_file: Path, shard: int | None, stack: ExitStack) -> str:
    """A Prometheus with Kapa's jobs (a shard of them if `shard`), stopped with `stack`; returns its URL."""
    workdir.mkdir(parents=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(targets_file, shard)))
    port = free_port()
    stack.enter_context(started([
        DEFAULT_BINARY, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        # The sidecar reads blocks as Prometheus writes them; equal durations keep Prometheus from compacting.
        "--storage.tsdb.min-block-duration=2h", "--storage.tsdb.max-block-duration=2h",
    ], log=workdir / "prometheus.log"))
    url = f"http://127.0.0.1:{port}"
    wait_until_answering(f"{url}/-/ready", 30)
    return url


def thanos_query(workdir: Path, shard_urls: list[str], stack: ExitStack) -> str:
    """A Thanos sidecar per shard and one Thanos Query over them; returns the Query's URL."""
    endpoints = []
    for index, url in enumerate(shard_urls):
        grpc_port, http_port = free_port(), free_port()
        stack.enter_context(started([
            str(THANOS), "sidecar", f"--prometheus.url={url}", f"--tsdb.path={workdir / f'shard-{index}' / 'data'}",
            f"--grpc-address=127.0.0.1:{grpc_port}", f"--http-address=127.0.0.1:{http_port}",
        ], log=workdir / f"sidecar-{index}.log"))
        wait_until_answering(f"http://127.0.0.1:{http_port}/-/ready", 30)
        endpoints.append(f"--endpoint=127.0.0.1:{grpc_port}")
    query_port = free_port()
    stack.enter_context(started([
        str(THANOS), "query", f"--http-address=127.0.0.1:{query_port}", f"--grpc-address=127.0.0.1:{free_port()}",
        *endpoints,
    ], log=workdir / "query.log"))
    url = f"http://127.0.0.1:{query_port}"
    wait_until_answering(f"{url}/-/ready", 30)
    return url


async def _compare(single: Scaler, sharded: Scaler, services: int, until: float, step: float,
                   farm: subprocess.Popen[str], latencies: dict[str, list[float]]) -> list[tuple[Decision, Decision]]:
    pairs: list[tuple[Decision, Decision]] = []
    stepped = False
    async for at in scaler_ticks(until):
        if not stepped and at >= step:
            assert farm.stdin is not None and farm.stdout is not None
            for service in range(0, services, 4):
                farm.stdin.write(f"step {service} {4 * (1 + service % 5)}\n")
                farm.stdin.flush()
                farm.stdout.readline()
            stepped = True
        decisions = []
        for scaler in (single, sharded):
            begun = time.perf_counter()
            decisions.append(await scaler.tick(at))
            latencies["single" if scaler is single else "thanos"].append((time.perf_counter() - begun) * 1000)
        for key, decision in decisions[0].items():
            if key in decisions[1]:
                pairs.append((decision, decisions[1][key]))
    return pairs


async def run(pods: int, services: int, measure_s: float, workdir: Path) -> None:
    farm = subprocess.Popen([sys.executable, "-m", "benchmarks.exporter_farm", "--pods", str(pods),
                             "--services", str(services)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert farm.stdin is not None and farm.stdout is not None
    with ExitStack() as stack:
        stack.callback(farm.wait, 10)
        stack.callback(farm.terminate)
        ports = json.loads(farm.stdout.readline())["ports"]
        # Service i's pods hold 1 + i % 5 requests each: steady loads of different sizes.
        for service in range(services):
            farm.stdin.write(f"step {service} {1 + service % 5}\n")
            farm.stdin.flush()
            farm.stdout.readline()
        targets_file = workdir / "targets.json"
        write_targets(targets_file, [ScrapeTarget(f"127.0.0.1:{port}") for port in ports])
        single_url = start_prometheus(workdir / "single", targets_file, None, stack)
        shard_urls = [start_prometheus(workdir / f"shard-{i}", targets_file, i, stack) for i in range(SHARDS)]
        query_url = thanos_query(workdir, shard_urls, stack)
        deadline = time.monotonic() + 90
        while min(scaling_targets_up(single_url), sum(scaling_targets_up(url) for url in shard_urls)) < pods:
            if time.monotonic() > deadline:
                raise TimeoutError("targets not all up within 90 s")
            await asyncio.sleep(1)
        shard_sizes = [int(scaling_targets_up(url)) for url in shard_urls]
        await asyncio.sleep(65)  # a full stable window of samples in every server
        catalog = StaticCatalog([ServiceSpec(ServiceKey(NAMESPACE, service_name(i)), ANNOTATIONS)
                                 for i in range(services)])
        sources = [PrometheusMetrics(url, timeout_s=5) for url in (single_url, query_url)]
        single, sharded = (Scaler(AutoscalerConfig.default(), catalog, source, ready_pods=source) for source in sources)
        latencies: dict[str, list[float]] = {"single": [], "thanos": []}
        now = time.time()
        step = now + measure_s / 2
        pairs = await _compare(single, sharded, services, now + measure_s, step, farm, latencies)
        for source in sources:
            await source.close()
    differing = [a.at_s - step for a, b in pairs
                 if (a.desired_pods, a.mode, a.panic_mode) != (b.desired_pods, b.mode, b.panic_mode)]
    same = len(pairs) - len(differing)
    gaps = [abs(a.stable_value - b.stable_value) / max(a.stable_value, 1e-9)
            for a, b in pairs if a.stable_value is not None and b.stable_value is not None]
    print(f"pods {pods} over {services} services; shards hold {shard_sizes} pods (hashmod {SHARDS})")
    print(f"decisions compared: {len(pairs)}; identical (desired pods, mode, panic): {same} "
          f"({100 * same / max(1, len(pairs)):.1f} %)")
    if differing:
        print(f"the differing ones, seconds after the step: {sorted(round(d, 1) for d in differing)}")
    print(f"largest relative difference of the observed stable value: {100 * max(gaps, default=0):.3f} %")
    for name, values in latencies.items():
        print(f"tick through {name:>6}: p50 {statistics.median(values):.0f} ms, max {max(values):.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sharded_prometheus",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=400)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--measure", default="40s")
    args = parser.parse_args(argv)
    if not THANOS.exists():
        print(f"no Thanos at {THANOS}: run `bash scripts/build-thanos.sh`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kapa-shards-") as workdir:
        asyncio.run(run(args.pods, args.services, parse_duration_s(args.measure), Path(workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
