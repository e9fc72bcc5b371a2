"""The activator end to end: a real activator process, real HTTP upstreams and a scaler stand-in on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from kapa.core import contract
from kapa.core.services import ServiceKey

from tests.activator.harness import activator, metric_value, pod
from tests.activator.test_poke import Scaler
from tests.activator.upstream import Upstream

HELLO = ServiceKey("default", "hello")
HOST = {"Host": "hello.default"}


def hello(**annotations: str) -> dict[str, object]:
    return {"name": "hello", "namespace": "default", "annotations": annotations, "hosts": ["hello.localhost"]}


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30))


async def get(client: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[int, str, dict[str, str]]:
    async with client.get(url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, await response.text(), dict(response.headers)


async def wait_for(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_cold_start_holds_every_request_and_forwards_each_once(tmp_path: Path) -> None:
    scaler = await Scaler().start()
    upstream = Upstream(ready=False)
    try:
        async with activator(tmp_path, [hello()], scaler_urls=[scaler.url]) as act, session() as client:
            requests = [
                asyncio.create_task(get(client, f"{act.url}/?id={i}&sleep=20", headers=HOST)) for i in range(200)
            ]

            async def all_held() -> bool:
                return metric_value(await act.metrics(client), contract.ACTIVATOR_HELD_REQUESTS) == 200

            await wait_for(all_held)
            assert scaler.pokes == ["default/hello"]  # once for the activation, not once per request
            # The pod appears (starting: its queue-proxy answers the probe 503), then turns ready.
            await upstream.start()
            await act.set_endpoints(client, HELLO, [upstream.endpoint])
            await asyncio.sleep(0.2)
            assert not any(task.done() for task in requests)
            upstream.make_ready()
            results = await asyncio.gather(*requests)

            assert [status for status, _, _ in results] == [200] * 200
            assert all(body.startswith(f"id={i} ") for i, (_, body, _) in enumerate(results))
            assert upstream.served == Counter({str(i): 1 for i in range(200)})  # each exactly once
            assert upstream.proxied == 200  # every forwarded request carries PROXY_HEADER
            assert scaler.pokes == ["default/hello"]

            text = await act.metrics(client)
            assert metric_value(text, contract.ACTIVATOR_HELD_REQUESTS) == 0
            assert metric_value(text, contract.REQUESTS, code_class="2xx") == 200
            assert metric_value(text, contract.ACTIVATOR_POKES) == 1
            assert metric_value(text, contract.ACTIVATOR_COLD_START_WAIT + "_count") == 200
            assert metric_value(text, contract.CONCURRENCY_SECONDS, kapa_component="activator")  # > 0
            scaling = await act.metrics(client, contract.SCALING_METRICS_PATH)
            assert contract.CONCURRENCY_SECONDS in scaling and contract.ACTIVATOR_HELD_REQUESTS not in scaling

            # Warm now: a request goes straight through, and no poke is sent.
            status, _, _ = await get(client, f"{act.url}/?id=warm", headers={"Host": "hello.localhost:8013"})
            assert status == 200 and scaler.pokes == ["default/hello"]
    finally:
        await upstream.stop()
        await scaler.stop()


async def test_unknown_host_gets_404_naming_it(tmp_path: Path) -> None:
    async with activator(tmp_path, [hello()]) as act, session() as client:
        status, body, _ = await get(client, f"{act.url}/x", headers={"Host": "nobody.example"})
        assert status == 404 and "nobody.example" in body


async def test_queue_overflow_gets_503_with_retry_after(tmp_path: Path) -> None:
    async with activator(tmp_path, [hello()], "--queue-limit", "5") as act, session() as client:
        held = [asyncio.create_task(get(client, f"{act.url}/?id={i}", headers=HOST)) for i in range(5)]

        async def five_held() -> bool:
            return metric_value(await act.metrics(client), contract.ACTIVATOR_HELD_REQUESTS) == 5

        await wait_for(five_held)
        status, body, headers = await get(client, f"{act.url}/?id=overflow", headers=HOST)
        assert status == 503 and "already waiting" in body and headers["Retry-After"] == "1"
        text = await act.metrics(client)
        assert metric_value(text, contract.REJECTED_REQUESTS, reason=contract.REASON_QUEUE_FULL) == 1
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)

        async def none_held() -> bool:  # clients that give up free their places
            return metric_value(await act.metrics(client), contract.ACTIVATOR_HELD_REQUESTS) == 0

        await wait_for(none_held)


async def test_held_past_timeout_gets_504(tmp_path: Path) -> None:
    services = [hello(**{contract.ANNOTATION_TIMEOUT_SECONDS: "0.5"})]
    async with activator(tmp_path, services) as act, session() as client:
        started = asyncio.get_running_loop().time()
        status, body, _ = await get(client, f"{act.url}/", headers=HOST)
        waited = asyncio.get_running_loop().time() - started
        assert status == 504 and "0.5s" in body
        assert 0.45 <= waited < 2.0
        text = await act.metrics(client)
        assert metric_value(text, contract.REJECTED_REQUESTS, reason=contract.REASON_TIMEOUT) == 1


async def test_pod_dying_mid_request_fails_that_request_only(tmp_path: Path) -> None:
    upstream = await Upstream().start()
    try:
        async with activator(tmp_path, [hello()]) as act, session() as client:
            await act.set_endpoints(client, HELLO, [upstream.endpoint])
            others = [asyncio.create_task(get(client, f"{act.url}/?id={i}&sleep=200", headers=HOST)) for i in range(20)]
            await asyncio.sleep(0.05)
            status, body, _ = await get(client, f"{act.url}/?id=doomed&die=1", headers=HOST)
            assert status == 502 and "kapa" in body
            assert [status for status, _, _ in await asyncio.gather(*others)] == [200] * 20
            # The pod is probed again and keeps serving.
            status, _, _ = await get(client, f"{act.url}/?id=after", headers=HOST)
            assert status == 200
    finally:
        await upstream.stop()


async def test_container_concurrency_one_never_overloads_a_pod_and_a_second_pod_takes_waiters(tmp_path: Path) -> None:
    first, second = await Upstream().start(), await Upstream().start()
    try:
        services = [hello(**{contract.ANNOTATION_CONTAINER_CONCURRENCY: "1"})]
        async with activator(tmp_path, services) as act, session() as client:
            await act.set_endpoints(client, HELLO, [first.endpoint])
            requests = [asyncio.create_task(get(client, f"{act.url}/?id={i}&sleep=30", headers=HOST)) for i in range(30)]
            await asyncio.sleep(0.2)
            assert 1 <= sum(first.served.values()) <= 7  # one at a time, ~30 ms each
            await act.set_endpoints(client, HELLO, [first.endpoint, second.endpoint])
            results = await asyncio.gather(*requests)
            assert [status for status, _, _ in results] == [200] * 30
            assert first.max_in_flight == 1 and second.max_in_flight == 1
            assert sum(second.served.values()) >= 8  # the waiting requests spread to the new pod
    finally:
        await first.stop()
        await second.stop()


async def test_sigterm_turns_unready_stops_accepting_and_finishes_held_requests(tmp_path: Path) -> None:
    upstream = await Upstream(ready=False).start()
    try:
        async with activator(tmp_path, [hello()], "--drain-delay", "0.3") as act, session() as client:
            await act.set_endpoints(client, HELLO, [upstream.endpoint])
            held = [asyncio.create_task(get(client, f"{act.url}/?id={i}", headers=HOST)) for i in range(10)]
            await asyncio.sleep(0.2)
            os.kill(act.process.pid, signal.SIGTERM)
            await asyncio.sleep(0.1)
            status, _, _ = await get(client, act.admin_url + contract.READY_PATH)
            assert status == 503  # readiness false first
            await asyncio.sleep(0.5)
            with pytest.raises(aiohttp.ClientConnectionError):  # then no new connections
                async with aiohttp.ClientSession() as fresh:
                    await get(fresh, f"{act.url}/?id=late", headers=HOST)
            upstream.make_ready()
            assert [status for status, _, _ in await asyncio.gather(*held)] == [200] * 10
            assert await asyncio.get_running_loop().run_in_executor(None, act.process.wait, 10) == 0
    finally:
        await upstream.stop()


async def test_scale_from_zero_through_a_real_queue_proxy_and_app(tmp_path: Path) -> None:
    """The pod is known before it is ready (as Kubernetes publishes a starting pod): the activator probes
    its queue-proxy and forwards the held requests once the app is up; the queue-proxy counts them proxied."""
    async with activator(tmp_path, [hello()]) as act, session() as client:
        requests = [asyncio.create_task(get(client, f"{act.url}/?sleep=10", headers=HOST)) for _ in range(50)]
        async with pod(tmp_path, HELLO, startup_delay_s=1.0) as started:
            await act.set_endpoints(client, HELLO, [started.endpoint])
            results = await asyncio.gather(*requests)
            assert [status for status, _, _ in results] == [200] * 50
            text = await started.metrics(client)
            assert metric_value(text, contract.REQUESTS, code_class="2xx") == 50
            assert metric_value(text, contract.PROXIED_REQUESTS) == 50


async def test_a_pod_gone_before_its_endpoint_update_costs_the_request_nothing(tmp_path: Path) -> None:
    """Endpoint removal reaches the activator late (always so with Kubernetes): a pod that refuses the
    connection sends the request back to wait for another pod, instead of failing it."""
    first, second = await Upstream().start(), await Upstream().start()
    try:
        async with activator(tmp_path, [hello()]) as act, session() as client:
            await act.set_endpoints(client, HELLO, [first.endpoint])
            assert (await get(client, f"{act.url}/?id=warm", headers=HOST))[0] == 200
            await first.stop()  # gone, and nobody told the activator
            await asyncio.sleep(0.1)  # its keep-alive connections are closed (a request racing that close gets 502)
            request = asyncio.create_task(get(client, f"{act.url}/?id=rescued", headers=HOST))
            await asyncio.sleep(0.2)
            assert not request.done()
            await act.set_endpoints(client, HELLO, [first.endpoint, second.endpoint])
            status, body, _ = await request
            assert status == 200 and body.startswith("id=rescued ") and second.served["rescued"] == 1
    finally:
        await second.stop()


async def test_a_websocket_held_at_zero_is_relayed_once_a_pod_is_ready(tmp_path: Path) -> None:
    upstream = await Upstream(ready=False).start()
    try:
        async with activator(tmp_path, [hello()]) as act, session() as client:
            connecting = asyncio.create_task(client.ws_connect(f"{act.url}/ws", headers=HOST))
            await asyncio.sleep(0.1)
            await act.set_endpoints(client, HELLO, [upstream.endpoint])
            await asyncio.sleep(0.1)
            assert not connecting.done()  # held: the pod's queue-proxy does not answer ready yet
            upstream.make_ready()
            socket = await asyncio.wait_for(connecting, 5)
            for text in ("one", "two"):
                await socket.send_str(text)
                assert (await socket.receive_str()) == f"{text} from {upstream.port}"
            text = await act.metrics(client)
            assert metric_value(text, contract.REQUESTS_IN_FLIGHT) == 1  # the socket holds its slot
            await socket.close()

            async def slot_released() -> bool:
                return metric_value(await act.metrics(client), contract.REQUESTS_IN_FLIGHT) == 0

            await wait_for(slot_released)
    finally:
        await upstream.stop()


async def test_a_held_upload_is_forwarded_whole(tmp_path: Path) -> None:
    upstream = await Upstream(ready=False).start()
    body = bytes(range(256)) * 4096  # 1 MiB: more than the relay buffers per request
    try:
        async with activator(tmp_path, [hello()]) as act, session() as client:

            async def upload(request_id: str) -> tuple[int, str]:
                async with client.post(f"{act.url}/?id={request_id}", data=body, headers=HOST) as response:
                    return response.status, await response.text()

            uploads = [asyncio.create_task(upload(str(i))) for i in range(5)]
            get_held = asyncio.create_task(get(client, f"{act.url}/?id=get", headers=HOST))
            await asyncio.sleep(0.2)
            await act.set_endpoints(client, HELLO, [upstream.endpoint])
            upstream.make_ready()
            for status, text in await asyncio.gather(*uploads):
                assert status == 200 and f"body={len(body)}" in text
            assert (await get_held)[0] == 200
    finally:
        await upstream.stop()
