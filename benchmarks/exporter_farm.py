"""Many simulated pods in one process, each serving the queue-proxy's own metrics endpoints on its own port.

The metrics pipeline benchmark (benchmarks.metrics_pipeline) points a real Prometheus at thousands of pods
without running thousands of queue-proxies: each simulated pod is a real `RequestStats` exposed through the
queue-proxy's own `metric_routes` (so the exposition is byte for byte the queue-proxy's), on a loopback
port of its own. Pod i belongs to service i mod SERVICES, in namespace "bench", and holds a steady number
of requests in flight, so its concurrency-seconds counter grows as a real one does.

    python -m benchmarks.exporter_farm --pods 2000 --services 1000

It prints one JSON line, {"ports": [...]} in pod order, once every port listens, then reads commands from
stdin, one per line, until stdin closes:

    step SERVICE IN_FLIGHT    set every pod of service index SERVICE to IN_FLIGHT requests in flight;
                              answers "stepped UNIX_TIME" with the moment it took effect
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Sequence

import uvloop

from kapa.relay import serve_routes
from queue_proxy.metrics import metric_routes
from queue_proxy.stats import RequestStats

NAMESPACE = "bench"
#: Requests in flight at every pod before any step: enough for a steady, non-zero concurrency.
BASELINE_IN_FLIGHT = 1


def service_name(index: int) -> str:
    return f"svc-{index:04d}"


class Pod:
    """One simulated pod: its counters and how many requests it holds in flight."""

    def __init__(self, service: int) -> None:
        self.service = service
        self.stats = RequestStats(time.monotonic())
        self.in_flight = 0
        self.set_in_flight(BASELINE_IN_FLIGHT)

    def set_in_flight(self, count: int) -> None:
        now = time.monotonic()
        while self.in_flight < count:
            self.stats.started(now, proxied=False)
            self.in_flight += 1
        while self.in_flight > count:
            self.stats.finished(now, now, proxied=False, status=200)
            self.in_flight -= 1


async def serve(pods: int, services: int) -> None:
    farm = [Pod(index % services) for index in range(pods)]
    ports = []
    for pod in farm:
        routes = metric_routes(pod.stats, lambda: 0, NAMESPACE, service_name(pod.service))
        server = await serve_routes("127.0.0.1", 0, routes)
        ports.append(server.sockets[0].getsockname()[1])
    print(json.dumps({"ports": ports}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, *values = line.split()
        if command == "step":
            service, in_flight = int(values[0]), int(values[1])
            for pod in farm:
                if pod.service == service:
                    pod.set_in_flight(in_flight)
            print(f"stepped {time.time():.3f}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exporter_farm", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, required=True)
    parser.add_argument("--services", type=int, required=True)
    args = parser.parse_args(argv)
    # Each pod is a listening socket plus Prometheus's keep-alive connections to it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.pods + 256)), hard))
    uvloop.run(serve(args.pods, args.services))
    return 0


if __name__ == "__main__":
    sys.exit(main())
