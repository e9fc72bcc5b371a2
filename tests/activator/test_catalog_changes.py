"""The activator follows a changing catalog (Kubernetes' enrolled Deployments) without a restart: a service
enrolled later is served with the pods already known, a changed limit applies, an unenrolled one is 404."""

from __future__ import annotations

import asyncio

import aiohttp

from kapa.core.endpoints import LocalEndpointSource
from kapa.core.services import ServiceEntry, ServiceKey, ServiceSpec
from kapa.core import contract

from activator.app import Activator, Listen
from activator.config import CatalogSettings
from tests.activator.upstream import Upstream
from tests.support import free_port

HELLO = ServiceKey("apps", "hello")


def entry(**annotations: str) -> ServiceEntry:
    return ServiceEntry(ServiceSpec(HELLO, annotations), extra_hosts=("hello.example",))


async def test_services_come_change_and_go_while_running() -> None:
    upstream = await Upstream().start()
    source = LocalEndpointSource()
    activator = Activator([], source, [], drain_delay_s=0)
    settings = CatalogSettings()
    listen = Listen("127.0.0.1", free_port(), free_port())
    await activator.start(listen)
    url = f"http://127.0.0.1:{listen.port}/?sleep=300"
    try:
        async with aiohttp.ClientSession() as client:
            async def status(host: str) -> int:
                async with client.get(url, headers={"Host": host}) as response:
                    return response.status

            source.set(HELLO, [upstream.endpoint])  # pods known before the service is enrolled
            await asyncio.sleep(0.05)
            assert await status("hello.example") == 404
            activator.apply_settings(settings([entry(**{contract.ANNOTATION_CONTAINER_CONCURRENCY: "1"})]))
            assert await status("hello.example") == 200
            assert await status("hello.apps.svc.cluster.local") == 200

            many = await asyncio.gather(*(status("hello.apps") for _ in range(6)))
            assert many == [200] * 6 and upstream.max_in_flight == 1, "containerConcurrency 1 held"
            activator.apply_settings(settings([entry(**{contract.ANNOTATION_CONTAINER_CONCURRENCY: "3"})]))
            many = await asyncio.gather(*(status("hello.apps") for _ in range(6)))
            assert many == [200] * 6 and upstream.max_in_flight == 3, "the new limit, no restart"

            activator.apply_settings(settings([]))
            assert await status("hello.apps") == 404
            assert HELLO not in activator.services
    finally:
        await activator.close()
        await upstream.stop()
