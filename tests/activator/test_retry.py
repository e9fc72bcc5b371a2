"""A pod that dies while the activator holds idle keep-alive connections to it costs no request: a request
lost on such a connection before any response byte is sent again, and so reaches the other pod."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from kapa.core import contract
from kapa.core.services import Endpoint

from activator.proxy import CONNECT_TIMEOUT_S
from tests.activator.harness import activator
from tests.activator.test_activator import HELLO, HOST, get, hello, session
from tests.activator.upstream import DyingUpstream
from tests.support import free_port, running, wait_for_port


async def _burst(client, url: str, count: int, concurrency: int) -> list[int]:  # type: ignore[no-untyped-def]
    """`count` GETs, `concurrency` at a time; their statuses."""
    statuses: list[int] = []

    async def worker(requests: int) -> None:
        for _ in range(requests):
            statuses.append((await get(client, url, headers=HOST))[0])

    await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
    return statuses


async def test_requests_on_stale_connections_to_a_dead_pod_reach_the_other_pod(tmp_path: Path) -> None:
    first, second = await DyingUpstream().start(), await DyingUpstream().start()
    async with activator(tmp_path, [hello()]) as act, session() as client:
        await act.set_endpoints(client, HELLO, [first.endpoint, second.endpoint])
        # Warm: several pooled connections to each pod, idle now.
        assert await _burst(client, f"{act.url}/warm", 200, 20) == [200] * 200
        assert first.served >= 20 and second.served >= 20
        served_by_second = second.served
        first.die()  # the activator is not told: its endpoint update comes later (if ever)

        statuses = await _burst(client, f"{act.url}/after", 200, 20)
        assert statuses == [200] * 200
        assert first.reset >= 1  # the stale connections were in fact tried, and reset
        assert second.served - served_by_second == 200


async def test_a_pod_killed_with_idle_connections_costs_no_request(tmp_path: Path) -> None:
    """The same with a real process killed by SIGKILL: the requests race the activator's noticing the
    kernel's closes. (The requests are sent once the process is gone: before that, the kernel still
    completes connections to its listening socket, and resets them when it dies, and a request on such
    a fresh connection cannot be proven unprocessed.)"""
    ports = [free_port(), free_port()]
    command = [sys.executable, "-m", "tests.queue_proxy.fast_upstream"]  # answers the probe too
    with running([*command, str(ports[0])]) as doomed, running([*command, str(ports[1])]):
        for port in ports:
            wait_for_port(port)
        async with activator(tmp_path, [hello()]) as act, session() as client:
            await act.set_endpoints(client, HELLO, [Endpoint("127.0.0.1", port) for port in ports])
            assert await _burst(client, f"{act.url}/warm", 200, 20) == [200] * 200
            os.kill(doomed.pid, signal.SIGKILL)
            await asyncio.to_thread(doomed.wait, 5)
            assert await _burst(client, f"{act.url}/after", 400, 20) == [200] * 400



async def test_a_request_that_cannot_be_replayed_is_not_sent_again(tmp_path: Path) -> None:
    """Safety: a POST whose body went out on the stale connection gets 502 (it may have been processed);
    afterwards the dead pod is out, and a GET waits for a pod (none comes: 504) instead of failing at once."""
    only = await DyingUpstream().start()
    services = [hello(**{contract.ANNOTATION_TIMEOUT_SECONDS: "0.5"})]
    async with activator(tmp_path, services) as act, session() as client:
        await act.set_endpoints(client, HELLO, [only.endpoint])
        assert (await get(client, f"{act.url}/warm", headers=HOST))[0] == 200  # one pooled connection
        served = only.served  # the warm request and the readiness probe
        only.die()
        async with client.post(f"{act.url}/upload", data=b"x" * 1000, headers=HOST) as response:
            assert response.status == 502
        assert only.reset == 1 and only.served == served
        assert (await get(client, f"{act.url}/later", headers=HOST))[0] == 504


async def test_a_pod_that_answers_nothing_costs_a_connect_timeout_not_the_request(tmp_path: Path) -> None:
    first, second = await DyingUpstream().start(), await DyingUpstream().start()
    try:
        async with activator(tmp_path, [hello()]) as act, session() as client:
            await act.set_endpoints(client, HELLO, [first.endpoint, second.endpoint])
            assert await _burst(client, f"{act.url}/warm", 100, 10) == [200] * 100
            first.vanish()
            started = asyncio.get_running_loop().time()
            assert await _burst(client, f"{act.url}/after", 100, 10) == [200] * 100
            took = asyncio.get_running_loop().time() - started
            assert CONNECT_TIMEOUT_S <= took < CONNECT_TIMEOUT_S + 3.0  # some waited for the connect timeout
    finally:
        first.close()
