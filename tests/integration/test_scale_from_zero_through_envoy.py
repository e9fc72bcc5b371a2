"""Issue 4's integrated tests: every part real, on loopback.

    client (kapa.tools.load) -> Envoy (programmed over ADS by gateway.Gateway) -> activator process
        -> queue-proxy process -> sample app process

Only the scaler's poke endpoint is a stand-in (it records pokes; the scale 0 -> 1 it would order is done
by the test itself: start a pod, push its endpoint to the activator). The Envoy, gateway, activator and
pod harnesses are the ones the parts' own tests use, imported rather than copied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from kapa.core import contract
from kapa.tools.load import LoadConfig, LoadResult, run_load
from kapa.core.services import Endpoint, ServiceKey

from gateway.bootstrap import BootstrapConfig
from gateway.control import Gateway, GatewayConfig
from gateway.launcher import EnvoyProcess
from gateway.resources import ListenerConfig
from tests.activator.harness import Pod, RunningActivator, activator, metric_value, pod
from tests.activator.test_poke import Scaler
from tests.gateway.conftest import eventually
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

KEY = ServiceKey("default", "hello")
HOST = "hello.default"
SERVICE = {"name": KEY.name, "namespace": KEY.namespace}


@dataclass
class Stack:
    """Envoy in front of a real activator, with the gateway that programs Envoy and a poke recorder."""

    gateway: Gateway
    envoy: EnvoyProcess
    activator: RunningActivator
    scaler: Scaler
    listener_port: int
    session: aiohttp.ClientSession

    def url(self, query: str) -> str:
        return f"http://127.0.0.1:{self.listener_port}/?{query}"

    async def activator_requests(self) -> float:
        text = await self.activator.metrics(self.session)
        return metric_value(text, contract.REQUESTS, code_class="2xx") or 0.0


@asynccontextmanager
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The service starts in proxy mode with no pods: all its traffic goes to the activator."""
    scaler = await Scaler().start()
    async with AsyncExitStack() as exits:
        exits.push_async_callback(scaler.stop)
        act = await exits.enter_async_context(
            activator(tmp_path, [SERVICE], "--drain-delay", "0", scaler_urls=[scaler.url])
        )
        listener_port, xds_port = free_port(), free_port()
        gateway = Gateway(
            GatewayConfig("127.0.0.1", xds_port, ListenerConfig("127.0.0.1", listener_port)),
            activator=[Endpoint("127.0.0.1", act.port)],
        )
        gateway.set_service(KEY, contract.MODE_PROXY, [])
        await gateway.start()
        exits.push_async_callback(gateway.stop)
        envoy = EnvoyProcess(BootstrapConfig(xds_port=xds_port, admin_port=free_port()))
        await envoy.start()
        exits.push_async_callback(envoy.stop)
        session = await exits.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        )
        yield Stack(gateway, envoy, act, scaler, listener_port, session)


async def pod_is_ready(session: aiohttp.ClientSession, target: Pod) -> bool:
    """The queue-proxy's own readiness, through its serving port with the probe header (never the app)."""
    try:
        async with session.get(
            f"http://127.0.0.1:{target.serving_port}/", headers={contract.PROBE_HEADER: contract.PROBE_HEADER_VALUE}
        ) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


@dataclass(frozen=True)
class PodCounts:
    """A queue-proxy's answered requests: all of them, and those that came through the activator."""

    total: float
    proxied: float

    @property
    def direct(self) -> float:
        return self.total - self.proxied


async def pod_counts(session: aiohttp.ClientSession, target: Pod) -> PodCounts:
    text = await target.metrics(session)
    return PodCounts(
        metric_value(text, contract.REQUESTS, code_class="2xx") or 0.0,
        metric_value(text, contract.PROXIED_REQUESTS) or 0.0,
    )


async def summed_counts(session: aiohttp.ClientSession, pods: Sequence[Pod]) -> PodCounts:
    counts = [await pod_counts(session, target) for target in pods]
    return PodCounts(sum(c.total for c in counts), sum(c.proxied for c in counts))


async def test_scale_from_zero_through_envoy_and_the_activator(tmp_path: Path) -> None:
    """1,000 concurrent requests to a service at zero; the pod starts on the poke, ready after 1 s."""
    requests = 1000
    async with stack(tmp_path) as s:
        load = asyncio.create_task(
            run_load(
                LoadConfig(
                    url=s.url("sleep=10"), concurrency=requests, requests=requests, headers=(("Host", HOST),),
                    timeout_s=45.0,
                )
            )
        )
        await eventually(lambda: bool(s.scaler.pokes), timeout_s=15, what="the activator's poke")
        poked_at = time.monotonic()
        async with pod(tmp_path, KEY, startup_delay_s=1.0) as new_pod:
            await s.activator.set_endpoints(s.session, KEY, [new_pod.endpoint])
            await eventually(lambda: pod_is_ready(s.session, new_pod), timeout_s=20, what="the pod's readiness")
            ready_at = time.monotonic()
            result: LoadResult = await asyncio.wait_for(load, 45)
            done_at = time.monotonic()

            counts = await pod_counts(s.session, new_pod)
            act_text = await s.activator.metrics(s.session)
            print(
                f"\npoke -> pod ready {ready_at - poked_at:.2f} s; pod ready -> last response "
                f"{done_at - ready_at:.2f} s; load {result.summary()}; cold-start waits "
                f"{metric_value(act_text, contract.ACTIVATOR_COLD_START_WAIT + '_count')}"
            )
            assert result.status_counts == {200: requests}, result.summary()
            assert result.errors == 0 and result.unfinished == 0
            # Each request reached the app exactly once, through the activator: none lost, none repeated.
            assert counts == PodCounts(total=requests, proxied=requests)
            assert metric_value(act_text, contract.REQUESTS, code_class="2xx") == requests
            # All of them arrived while no pod was ready: a real cold start of 1,000 held requests.
            assert metric_value(act_text, contract.ACTIVATOR_COLD_START_WAIT + "_count") == requests
            # One poke for the whole activation, not one per request.
            assert s.scaler.pokes == [f"{KEY.namespace}/{KEY.name}"]
            assert metric_value(act_text, contract.ACTIVATOR_POKES) == 1


async def test_switch_proxy_serve_proxy_under_steady_load_fails_nothing(tmp_path: Path) -> None:
    """30 clients for 8 s (20 ms of work each); the gateway switches proxy -> serve -> proxy meanwhile."""
    async with stack(tmp_path) as s, pod(tmp_path, KEY) as first, pod(tmp_path, KEY) as second:
        pods = [first, second]
        for target in pods:
            await eventually(lambda t=target: pod_is_ready(s.session, t), timeout_s=20, what="a pod's readiness")
        await s.activator.set_endpoints(s.session, KEY, [p.endpoint for p in pods])
        s.gateway.set_service(KEY, contract.MODE_PROXY, [p.endpoint for p in pods])

        load = asyncio.create_task(
            run_load(LoadConfig(url=s.url("sleep=20"), concurrency=30, duration_s=8.0, headers=(("Host", HOST),)))
        )
        # (activator answered, pods' counts) before the load and at the end of each phase.
        marks = [(await s.activator_requests(), await summed_counts(s.session, pods))]
        for mode in (contract.MODE_SERVE, contract.MODE_PROXY):
            await asyncio.sleep(2.5)
            marks.append((await s.activator_requests(), await summed_counts(s.session, pods)))
            s.gateway.set_service(KEY, mode)
        result = await load
        await asyncio.sleep(0.2)  # let the last answered requests reach the counters
        marks.append((await s.activator_requests(), await summed_counts(s.session, pods)))

        print(f"\nload {result.summary()}; phase marks (activator, pods) {marks}")
        assert result.errors == 0, result.summary()
        assert set(result.status_counts) == {200}, result.summary()
        assert result.responses > 1000, "the load loop did not run"
        (a0, p0), (a1, p1), (a2, p2), (a3, p3) = marks
        # First proxy phase: through the activator, and the pods saw only proxied requests.
        assert a1 - a0 > 100 and p1.direct - p0.direct == 0
        # Serve phase: Envoy sent requests straight to the pods.
        assert p2.direct - p1.direct > 100
        # Back to proxy: the activator carries traffic again.
        assert a3 - a2 > 100
        # Every response came from a pod (the requests cut off when the 8 s ended may have reached one too),
        # and every proxied request a pod answered is one the activator forwarded.
        assert result.responses <= p3.total - p0.total <= result.responses + result.unfinished
        assert a3 - a0 <= p3.proxied - p0.proxied <= a3 - a0 + result.unfinished
