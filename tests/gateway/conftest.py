"""A real Envoy programmed by an in-process Gateway, in front of small named upstreams on loopback."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from kapa.core import contract
from kapa.core.services import Endpoint, ServiceKey

from gateway.bootstrap import BootstrapConfig
from gateway.control import Gateway, GatewayConfig
from gateway.launcher import EnvoyProcess
from gateway.resources import ListenerConfig
from tests.support import free_port

KEY = ServiceKey("ns", "svc")
HOST = "svc.ns"


@dataclass
class Upstream:
    """An HTTP server that answers with its own name (after `?delay_ms=N`), counting what it served."""

    name: str
    runner: web.AppRunner
    endpoint: Endpoint
    served: int = 0
    in_flight: int = 0

    @classmethod
    async def start(cls, name: str) -> Upstream:
        app = web.Application()
        runner = web.AppRunner(app, access_log=None)
        upstream = cls(name, runner, Endpoint("127.0.0.1", free_port()))

        async def handle(request: web.Request) -> web.Response:
            upstream.in_flight += 1
            try:
                await asyncio.sleep(int(request.query.get("delay_ms", "0")) / 1000)
                upstream.served += 1
                return web.Response(text=name)
            finally:
                upstream.in_flight -= 1

        app.router.add_route("*", "/{tail:.*}", handle)
        await runner.setup()
        await web.TCPSite(runner, upstream.endpoint.host, upstream.endpoint.port).start()
        return upstream


@dataclass
class Rig:
    gateway: Gateway
    envoy: EnvoyProcess
    session: aiohttp.ClientSession
    listener_port: int
    #: "sotw" or "delta": the xDS variant this Envoy speaks.
    protocol: str
    activator: Upstream
    pods: dict[str, Upstream] = field(default_factory=dict)

    async def get(self, host: str = HOST, path: str = "/") -> tuple[int, str]:
        async with self.session.get(f"http://127.0.0.1:{self.listener_port}{path}", headers={"Host": host}) as r:
            return r.status, await r.text()

    async def admin_json(self, path: str) -> dict:  # type: ignore[type-arg]
        async with self.session.get(self.envoy.admin_url + path) as response:
            return await response.json()

    async def route_version_in_envoy(self) -> str:
        """The RDS version Envoy runs, from its own config_dump."""
        dump = await self.admin_json("/config_dump?resource=dynamic_route_configs")
        (config,) = dump["configs"]
        return config["version_info"]

    async def responders(self, count: int) -> Counter[str]:
        """Who answered `count` sequential requests (status appended when not 200)."""
        seen: Counter[str] = Counter()
        for _ in range(count):
            status, body = await self.get()
            seen[body if status == 200 else f"{status}:{body[:40]}"] += 1
        return seen


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 5.0, what: str = "condition"
) -> float:
    """Poll `check` (plain or async) until true; the seconds it took. Fails the test after `timeout_s`."""
    start = time.monotonic()

    async def holds() -> bool:
        result = check()
        return await result if inspect.isawaitable(result) else result

    while not await holds():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"{what} not reached within {timeout_s}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(params=["sotw", "delta"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """Every Envoy test runs against both xDS variants: state-of-the-world and incremental (delta)."""
    activator = await Upstream.start("activator")
    pods = {name: await Upstream.start(name) for name in ("pod-a", "pod-b", "pod-c")}
    listener_port, xds_port = free_port(), free_port()
    gateway = Gateway(
        GatewayConfig("127.0.0.1", xds_port, ListenerConfig("127.0.0.1", listener_port)),
        activator=[activator.endpoint],
    )
    gateway.set_service(KEY, contract.MODE_PROXY, [])
    await gateway.start()
    envoy = EnvoyProcess(BootstrapConfig(xds_port=xds_port, admin_port=free_port(), delta=request.param == "delta"))
    try:
        await envoy.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Rig(gateway, envoy, session, listener_port, request.param, activator, pods)
    finally:
        await envoy.stop()
        await gateway.stop()
        for upstream in (activator, *pods.values()):
            await upstream.runner.cleanup()
