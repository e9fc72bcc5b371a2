"""KEDA external scaler throughput: GetMetrics calls per second against a scaler with 1,000 services cached.

    python -m benchmarks.grpc_scaler [--services 1000] [--duration 10] [--clients 2] [--concurrency 32] [--json]

A scaler process (the real Scaler, HTTP API and gRPC server of `kapa scaler`) decides for N services every
tick from a synthetic metrics source (fixed per-service concurrency; no Prometheus, so the figure is the
gRPC path's and not Prometheus's), and `--clients` client processes each keep `--concurrency` GetMetrics
calls in flight over one channel, cycling through all services, for `--duration` seconds. It prints calls
per second, p50/p99 latency, calls per CPU-second of the scaler process, and the scaler's mean tick time
for the N services (from its own kapa_scaler_tick_duration_seconds). Figures only; nothing passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Collection
from contextlib import ExitStack
from pathlib import Path

import grpc
import uvloop
from aiohttp import web

from benchmarks.harness import cpu_seconds, free_port, started, wait_until_answering
from kapa.core import contract
from kapa.core.services import ServiceKey, ServiceSpec
from scaler.catalog import StaticCatalog
from kapa.core.settings import AutoscalerConfig
from scaler.grpc_server import metric_name, start_grpc_server
from scaler.http_api import make_app
from scaler.loop import Scaler
from scaler.observations import MetricsSnapshot, WindowQuery
from scaler.proto import externalscaler_pb2 as pb
from scaler.proto import externalscaler_pb2_grpc as pb_grpc


def service_keys(count: int) -> list[ServiceKey]:
    return [ServiceKey(f"team-{index % 10}", f"service-{index:05d}") for index in range(count)]


class SyntheticMetrics:
    """MetricsSource and ReadyPodCounter with fixed answers: service i sees (i % 50) concurrent requests."""

    def __init__(self, keys: list[ServiceKey]) -> None:
        self._values = {key: float(index % 50) for index, key in enumerate(keys)}
        self._ready = {key: max(1, index % 5) for index, key in enumerate(keys)}

    async def observe(self, queries: Collection[WindowQuery], at: float) -> MetricsSnapshot:
        return MetricsSnapshot(at=at, values={query: self._values for query in queries}, ready_pods=self._ready)

    def ready_pods(self, key: ServiceKey) -> int | None:
        return self._ready[key]


async def serve(services: int, grpc_port: int, http_port: int) -> None:
    keys = service_keys(services)
    metrics = SyntheticMetrics(keys)
    scaler = Scaler(AutoscalerConfig.default(), StaticCatalog(ServiceSpec(key) for key in keys), metrics, metrics)
    runner = web.AppRunner(make_app(scaler), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    server = await start_grpc_server(scaler, "127.0.0.1", grpc_port)
    scaler.start()
    try:
        await server.wait_for_termination()
    finally:
        await scaler.stop()


async def client(address: str, services: int, duration_s: float, concurrency: int, offset: int) -> dict[str, object]:
    requests = [
        pb.GetMetricsRequest(
            scaledObjectRef=pb.ScaledObjectRef(name=key.name, namespace=key.namespace), metricName=metric_name(key)
        )
        for key in service_keys(services)
    ]
    latencies_ms: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        get_metrics = pb_grpc.ExternalScalerStub(channel).GetMetrics
        await get_metrics(requests[0])  # connect before the clock starts
        deadline = time.perf_counter() + duration_s

        async def worker(start: int) -> None:
            nonlocal errors
            index = start
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    await get_metrics(requests[index % len(requests)])
                except grpc.aio.AioRpcError:
                    errors += 1
                latencies_ms.append((time.perf_counter() - sent) * 1000)
                index += concurrency

        await asyncio.gather(*(worker(offset + i) for i in range(concurrency)))
    return {"calls": len(latencies_ms), "errors": errors, "latencies_ms": latencies_ms}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _mean_tick_ms(http_url: str) -> tuple[float, int]:
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in lines if line and not line.startswith("#")}
    count = values.get(f"{contract.SCALER_TICK_DURATION}_count", 0.0)
    total = values.get(f"{contract.SCALER_TICK_DURATION}_sum", 0.0)
    return (total / count * 1000 if count else float("nan")), int(count)


def run(args: argparse.Namespace) -> dict[str, object]:
    grpc_port, http_port = free_port(), free_port()
    http_url = f"http://127.0.0.1:{http_port}"
    me = [sys.executable, "-m", "benchmarks.grpc_scaler"]
    with tempfile.TemporaryDirectory(prefix="kapa-bench-grpc-") as work:
        server_args = [*me, "--serve", "--services", str(args.services),
                       "--grpc-port", str(grpc_port), "--http-port", str(http_port)]  # fmt: skip
        with started(server_args, log=Path(work) / "server.log") as server:
            wait_until_answering(f"{http_url}/readyz", 30, server)
            cpu_before = cpu_seconds(server.pid)
            outputs = [Path(work) / f"client-{index}.json" for index in range(args.clients)]
            processes: list[subprocess.Popen[bytes]] = []
            began = time.perf_counter()
            with ExitStack() as clients:
                for index, output in enumerate(outputs):
                    client_args = [*me, "--client", f"127.0.0.1:{grpc_port}", "--services", str(args.services),
                                   "--duration", str(args.duration), "--concurrency", str(args.concurrency),
                                   "--offset", str(index * args.concurrency), "--out", str(output)]  # fmt: skip
                    process = clients.enter_context(started(client_args, log=Path(work) / f"client-{index}.log"))
                    processes.append(process)
                for process in processes:
                    process.wait(args.duration + 60)
            wall_s = time.perf_counter() - began
            server_cpu_s = cpu_seconds(server.pid) - cpu_before
            tick_ms, ticks = _mean_tick_ms(http_url)
            for index, output in enumerate(outputs):
                if not output.exists():
                    log = (Path(work) / f"client-{index}.log").read_text()[-3000:]
                    raise RuntimeError(f"client process {index} failed:\n{log}")
            results = [json.loads(output.read_text()) for output in outputs]
    latencies = [value for result in results for value in result["latencies_ms"]]
    calls = len(latencies)
    return {
        "services": args.services,
        "clients": args.clients,
        "concurrency_per_client": args.concurrency,
        "duration_s": args.duration,
        "calls": calls,
        "errors": sum(result["errors"] for result in results),
        "calls_per_s": round(calls / args.duration),
        "p50_ms": round(_percentile(latencies, 0.50), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "scaler_cpu_s": round(server_cpu_s, 2),
        "calls_per_scaler_cpu_s": round(calls / server_cpu_s) if server_cpu_s > 0 else None,
        "scaler_tick_ms_mean": round(tick_ms, 2),
        "ticks_during_run": ticks,
        "wall_s": round(wall_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_scaler", description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per client process")
    parser.add_argument("--json", action="store_true")
    # Internal roles of the child processes.
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    if args.serve:
        uvloop.run(serve(args.services, args.grpc_port, args.http_port))
        return 0
    if args.client:
        result = uvloop.run(client(args.client, args.services, args.duration, args.concurrency, args.offset))
        args.out.write_text(json.dumps(result))
        return 0

    figures = run(args)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"KEDA GetMetrics against a scaler with {figures['services']} services cached "
          f"({figures['clients']} client processes x {figures['concurrency_per_client']} in flight, "
          f"{figures['duration_s']:g} s)")  # fmt: skip
    print(f"  calls/s              {figures['calls_per_s']:>10}   ({figures['calls']} calls, {figures['errors']} errors)")
    print(f"  latency p50 / p99    {figures['p50_ms']:>7.3f} ms / {figures['p99_ms']:.3f} ms")
    print(f"  calls per CPU-second {figures['calls_per_scaler_cpu_s']:>10}   (scaler process: {figures['scaler_cpu_s']} CPU-s)")
    print(f"  scaler tick          {figures['scaler_tick_ms_mean']:>7.2f} ms mean for {figures['services']} services "
          f"({figures['ticks_during_run']} ticks)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
