"""The activator benchmark: how late a held request is once its pod turns ready, and what proxying costs.

    python -m benchmarks.activation [--cold-starts 20] [--duration 10s] [--connections 50] [--json] [--no-pin]

Part 1, activation overhead (issue 4's goal: the first held request forwarded within 20 ms of the pod's
queue-proxy turning ready). A real activator process holds one request for a service at zero; a pod
stand-in (an HTTP server in this script that answers the queue-proxy probe 503, then 200) is published
while still starting, as Kubernetes publishes a starting pod, and turns ready after a random 50-150 ms
(so readiness does not fall in step with the probe period). Measured: from the instant it turns ready to
the held request's response, over N cold starts, p50/p90/p99/max. The same again for the local mode's
flow, where the endpoint is pushed (PUT on the admin port) at the moment the pod is ready.

Part 2, memory: RSS of the activator before and while `--held` (5,000) requests are held at zero, each on
its own connection.

Part 3, throughput: wrk against the sample app directly and through the activator with a ready pod (the
activator forwarding to the sample app), requests/s, p50/p99 and requests per CPU-second of the activator
process. On two or more CPUs the activator runs alone on the first, the rest on the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import uvloop
import yaml
from aiohttp import web

from benchmarks.harness import WrkResult, cpu_seconds, free_port, rss_mb, run_wrk, started, wait_until_answering
from benchmarks.proxy import Placement
from kapa.core import contract
from kapa.tools.load import parse_duration
from kapa.core.services import Endpoint, ServiceKey

SERVICE = ServiceKey("bench", "hello")
GOAL_MS = 20.0


@dataclass(frozen=True)
class ActivationFigures:
    flow: str
    samples: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class ThroughputFigures:
    target: str
    wrk: WrkResult
    activator_cpu_s: float | None

    @property
    def requests_per_cpu_s(self) -> float | None:
        return self.wrk.requests / self.activator_cpu_s if self.activator_cpu_s else None


class StartingPod:
    """A pod stand-in whose queue-proxy readiness this script switches: probe 503, then 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.ready = False
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)

    async def _handle(self, request: web.Request) -> web.Response:
        if request.headers.get(contract.PROBE_HEADER) == contract.PROBE_HEADER_VALUE:
            return web.Response(status=200 if self.ready else 503)
        return web.Response(text="hello\n")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _services_file(directory: Path) -> Path:
    path = directory / "services.yaml"
    entry = {"name": SERVICE.name, "namespace": SERVICE.namespace, "hosts": ["127.0.0.1"]}
    path.write_text(yaml.safe_dump({"services": [entry]}))
    return path


@contextmanager
def _activator(directory: Path, placement: Placement) -> Iterator[tuple[int, int, int]]:
    """A running activator: (pid, proxy port, admin port)."""
    port, admin_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "activator", "--services", str(_services_file(directory)), "--host", "127.0.0.1",
        "--port", str(port), "--admin-port", str(admin_port), "--drain-delay", "0",
    ]
    with started(command, None, placement.proxy_cpus, directory / "activator.log") as process:
        wait_until_answering(f"http://127.0.0.1:{admin_port}{contract.READY_PATH}", 20, process)
        yield process.pid, port, admin_port


async def _put_endpoints(client: aiohttp.ClientSession, admin_port: int, endpoints: list[Endpoint]) -> None:
    path = contract.ACTIVATOR_ENDPOINTS_PATH.format(namespace=SERVICE.namespace, name=SERVICE.name)
    async with client.put(f"http://127.0.0.1:{admin_port}{path}", json=[str(e) for e in endpoints]) as response:
        if response.status != 204:
            raise RuntimeError(f"activator refused endpoints: {response.status} {await response.text()}")


async def _cold_starts(port: int, admin_port: int, count: int, pushed_when_ready: bool) -> list[float]:
    """Seconds from the pod turning ready to the held request's response, once per cold start."""
    loop = asyncio.get_running_loop()
    rng = random.Random(4)
    samples = []
    async with aiohttp.ClientSession() as client:
        for _ in range(count):
            pod = StartingPod()
            await pod.start()
            try:
                await _put_endpoints(client, admin_port, [])  # the service is at zero
                held = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/"))
                await asyncio.sleep(0.05)
                if not pushed_when_ready:
                    await _put_endpoints(client, admin_port, [pod.endpoint])  # published while starting
                await asyncio.sleep(rng.uniform(0.05, 0.15))
                pod.ready = True
                ready_at = loop.time()
                if pushed_when_ready:
                    await _put_endpoints(client, admin_port, [pod.endpoint])
                response = await held
                answered_at = loop.time()
                if response.status != 200:
                    raise RuntimeError(f"held request answered {response.status}: {await response.text()}")
                response.release()
                samples.append(answered_at - ready_at)
            finally:
                await pod.stop()
    return samples


async def _held_gauge(client: aiohttp.ClientSession, admin_port: int) -> float:
    async with client.get(f"http://127.0.0.1:{admin_port}{contract.METRICS_PATH}") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(contract.ACTIVATOR_HELD_REQUESTS + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _held_memory(pid: int, port: int, admin_port: int, count: int) -> tuple[float, float]:
    """(RSS before, RSS with `count` requests held), in MB: what a flood of requests at zero costs."""
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    async with aiohttp.ClientSession() as client:
        await _put_endpoints(client, admin_port, [])
        before = rss_mb(pid)
        writers = []
        try:
            for start in range(0, count, 500):
                batch = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                               for _ in range(start, min(count, start + 500))))
                for _, writer in batch:
                    writer.write(request)
                    writers.append(writer)
            deadline = asyncio.get_running_loop().time() + 60
            while await _held_gauge(client, admin_port) < count:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("the activator did not hold every request")
                await asyncio.sleep(0.2)
            held = rss_mb(pid)
        finally:
            for writer in writers:
                writer.close()
        while await _held_gauge(client, admin_port) > 0:  # clients gone: their places are freed
            await asyncio.sleep(0.2)
    return before, held


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _figures(flow: str, samples_s: list[float]) -> ActivationFigures:
    ms = sorted(value * 1000 for value in samples_s)
    return ActivationFigures(flow, len(ms), statistics.median(ms), _quantile(ms, 0.9), _quantile(ms, 0.99), ms[-1])


def run(cold_starts: int, duration_s: int, connections: int, pin: bool, held_requests: int) -> dict[str, object]:
    placement = Placement.choose(pin)
    with tempfile.TemporaryDirectory(prefix="kapa-activation-") as tmp:
        directory = Path(tmp)
        with _activator(directory, placement) as (pid, port, admin_port):
            activation = [
                _figures("published while starting (Kubernetes)",
                         uvloop.run(_cold_starts(port, admin_port, cold_starts, pushed_when_ready=False))),
                _figures("pushed when ready (local mode)",
                         uvloop.run(_cold_starts(port, admin_port, cold_starts, pushed_when_ready=True))),
            ]
            rss_before, rss_held = uvloop.run(_held_memory(pid, port, admin_port, held_requests))
            app_port = free_port()
            with started([sys.executable, "-m", "kapa", "sample-app", "--port", str(app_port)], None,
                         placement.load_cpus, directory / "app.log") as app:
                wait_until_answering(f"http://127.0.0.1:{app_port}{contract.READY_PATH}", 20, app)

                async def publish() -> None:
                    async with aiohttp.ClientSession() as client:
                        await _put_endpoints(client, admin_port, [Endpoint("127.0.0.1", app_port)])

                uvloop.run(publish())
                wait_until_answering(f"http://127.0.0.1:{port}/", 10)
                throughput = []
                for target, url, measured_pid in (
                    ("direct", f"http://127.0.0.1:{app_port}/", None),
                    ("activator", f"http://127.0.0.1:{port}/", pid),
                ):
                    run_wrk(url, connections, 1, 1, placement.load_cpus)  # warm-up
                    before = cpu_seconds(measured_pid) if measured_pid else 0.0
                    wrk = run_wrk(url, connections, duration_s, 1, placement.load_cpus)
                    cpu = cpu_seconds(measured_pid) - before if measured_pid else None
                    throughput.append(ThroughputFigures(target, wrk, cpu))
    memory = {"held_requests": held_requests, "rss_before_mb": rss_before, "rss_held_mb": rss_held}
    return {"placement": placement.describe(), "activation": activation, "throughput": throughput, "memory": memory}


def format_report(figures: dict[str, object]) -> str:
    lines = ["activation overhead: pod's queue-proxy ready -> held request answered (ms)",
             f"  {'flow':<42}{'n':>4}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}"]
    for row in figures["activation"]:  # type: ignore[attr-defined]
        lines.append(f"  {row.flow:<42}{row.samples:>4}{row.p50_ms:>8.1f}{row.p90_ms:>8.1f}{row.p99_ms:>8.1f}{row.max_ms:>8.1f}")
    lines.append(f"  goal: within {GOAL_MS:g} ms")
    memory = figures["memory"]
    extra_mb = memory["rss_held_mb"] - memory["rss_before_mb"]  # type: ignore[index]
    lines += ["", f"memory: {memory['held_requests']:,} requests held at zero: activator RSS "  # type: ignore[index]
              f"{memory['rss_before_mb']:.0f} -> {memory['rss_held_mb']:.0f} MB "  # type: ignore[index]
              f"({extra_mb * 1024 / memory['held_requests']:.1f} KB per held request)"]  # type: ignore[index]
    lines += ["", f"throughput ({figures['placement']})",
              f"  {'target':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'activator CPU-s':>17}{'req/CPU-s':>11}"]
    for row in figures["throughput"]:  # type: ignore[attr-defined]
        per_cpu = f"{row.requests_per_cpu_s:,.0f}" if row.requests_per_cpu_s else "-"
        cpu = f"{row.activator_cpu_s:.2f}" if row.activator_cpu_s is not None else "-"
        lines.append(f"  {row.target:<12}{row.wrk.requests_per_s:>10,.0f}{row.wrk.latency_p50_ms:>9.2f}"
                     f"{row.wrk.latency_p99_ms:>9.2f}{row.wrk.errors:>8}{cpu:>17}{per_cpu:>11}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.activation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold-starts", type=int, default=20)
    parser.add_argument("--duration", type=parse_duration, default=10.0, help="wrk duration per target")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--held", type=int, default=5000, help="requests held at once for the memory figure")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the activator to its own CPU")
    args = parser.parse_args(argv)
    figures = run(args.cold_starts, max(1, round(args.duration)), args.connections, not args.no_pin, args.held)
    if args.json:
        print(json.dumps({key: [asdict(row) if hasattr(row, "__dataclass_fields__") else row for row in value]
                          if isinstance(value, list) else value for key, value in figures.items()}, indent=2))
    else:
        print(format_report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
