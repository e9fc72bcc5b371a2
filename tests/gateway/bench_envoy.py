"""Benchmark (not a test): requests/s through the Kapa-programmed Envoy in serve mode, beside the upstream alone.

    .venv/bin/python -m tests.gateway.bench_envoy [--seconds 5] [--connections 50] [--services 1000]

Also: how fast a mode switch and an endpoint change reach Envoy (until its ACK), the latter with many
services, over state-of-the-world and delta xDS.

The upstream is a minimal uvloop responder in its own process; wrk drives load; Envoy runs one worker.
Envoy's CPU time is read from /proc to give requests per Envoy CPU-second. Figures on a shared 2-core
machine are indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time

from kapa.core import contract
from kapa.core.services import Endpoint, ServiceKey

from gateway.bootstrap import DEFAULT_NODE_ID as NODE
from gateway.bootstrap import BootstrapConfig
from gateway.control import Gateway, GatewayConfig
from gateway.launcher import EnvoyProcess
from gateway.resources import ENDPOINT_TYPE, ROUTE_TYPE, ListenerConfig
from tests.support import free_port, running, wait_for_port

RESPONDER = """
import asyncio, sys, uvloop
RESPONSE = b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nContent-Type: text/plain\\r\\n\\r\\npod-a"
class Responder(asyncio.Protocol):
    def connection_made(self, transport): self.transport = transport
    def data_received(self, data):
        self.transport.write(RESPONSE * data.count(b"\\r\\n\\r\\n"))
async def main():
    server = await asyncio.get_running_loop().create_server(Responder, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
uvloop.run(main())
"""

KEY = ServiceKey("bench", "svc")


def wrk(url: str, seconds: int, connections: int, host: str | None = None) -> tuple[float, str, str]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if host:
        args[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"  warning: {non2xx.group(1)} non-2xx responses")
    return rps, p50, p99


async def switch_latencies_ms(gateway: Gateway, count: int) -> list[float]:
    """Time from a mode change in Python to Envoy's ACK of the new route table, `count` times."""
    latencies = []
    for index in range(count):
        start = time.perf_counter()
        gateway.set_mode(KEY, contract.MODE_PROXY if index % 2 == 0 else contract.MODE_SERVE)
        version = gateway.cache.snapshot()[ROUTE_TYPE].version
        while gateway.xds_status()[NODE][ROUTE_TYPE].acked_version != version:
            await asyncio.sleep(0.0005)
        latencies.append((time.perf_counter() - start) * 1000)
    return sorted(latencies)


async def endpoint_change_latencies_ms(services: int, delta: bool, count: int) -> list[float]:
    """With `services` services serving, time from one service's endpoint change to Envoy's EDS ACK."""
    xds_port = free_port()
    gateway = Gateway(GatewayConfig("127.0.0.1", xds_port, ListenerConfig("127.0.0.1", free_port())))
    keys = [ServiceKey("bench", f"svc{index}") for index in range(services)]
    for index, key in enumerate(keys):
        gateway.set_service(key, contract.MODE_SERVE, [Endpoint(f"10.{index // 250}.{index % 250}.1", 8012)])
    await gateway.start()
    latencies = []
    try:
        async with EnvoyProcess(BootstrapConfig(xds_port=xds_port, admin_port=free_port(), delta=delta)):
            for index in range(count):
                start = time.perf_counter()
                gateway.set_endpoints(keys[0], [Endpoint("10.255.0.1", 8012 + index % 2)])
                version = gateway.cache.snapshot()[ENDPOINT_TYPE].version
                while gateway.xds_status()[NODE][ENDPOINT_TYPE].acked_version != version:
                    await asyncio.sleep(0.0005)
                latencies.append((time.perf_counter() - start) * 1000)
    finally:
        await gateway.stop()
    return sorted(latencies)


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench(seconds: int, connections: int, services: int) -> None:
    upstream_port, listener_port, xds_port = free_port(), free_port(), free_port()
    with running([sys.executable, "-c", RESPONDER, str(upstream_port)]):
        wait_for_port(upstream_port)
        pod = Endpoint("127.0.0.1", upstream_port)
        gateway = Gateway(GatewayConfig("127.0.0.1", xds_port, ListenerConfig("127.0.0.1", listener_port)))
        gateway.set_service(KEY, contract.MODE_SERVE, [pod])
        await gateway.start()
        try:
            async with EnvoyProcess(BootstrapConfig(xds_port=xds_port, admin_port=free_port())) as envoy:
                url = f"http://127.0.0.1:{listener_port}/"
                await asyncio.to_thread(wrk, url, 1, connections, "svc.bench")  # warm up
                direct = await asyncio.to_thread(wrk, f"http://127.0.0.1:{upstream_port}/", seconds, connections)
                pid = envoy._process.pid  # type: ignore[union-attr]
                before = cpu_seconds(pid)
                through = await asyncio.to_thread(wrk, url, seconds, connections, "svc.bench")
                envoy_cpu = cpu_seconds(pid) - before
                switch_ms = await switch_latencies_ms(gateway, 40)
        finally:
            await gateway.stop()
    print(f"wrk -t1 -c{connections} -d{seconds}s, Envoy --concurrency 1, upstream = uvloop responder")
    print(f"  upstream direct:        {direct[0]:9.0f} req/s  p50 {direct[1]}  p99 {direct[2]}")
    print(f"  Envoy, serve mode:      {through[0]:9.0f} req/s  p50 {through[1]}  p99 {through[2]}")
    print(f"  Envoy CPU: {envoy_cpu:.2f} s -> {through[0] * seconds / max(envoy_cpu, 1e-9):.0f} requests per Envoy CPU-second")
    median, slowest = switch_ms[len(switch_ms) // 2], switch_ms[-1]
    print(f"  mode switch, set_mode() to Envoy's ACK of the new routes ({len(switch_ms)}x): "
          f"p50 {median:.1f} ms  max {slowest:.1f} ms")
    for protocol, delta in (("sotw", False), ("delta", True)):
        changes = await endpoint_change_latencies_ms(services, delta, 20)
        print(f"  {services} services, one service's endpoint change to Envoy's EDS ACK, {protocol:5}: "
              f"p50 {changes[len(changes) // 2]:.1f} ms  max {changes[-1]:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--services", type=int, default=1000, help="services for the endpoint-change figures")
    args = parser.parse_args()
    asyncio.run(bench(args.seconds, args.connections, args.services))


if __name__ == "__main__":
    main()
