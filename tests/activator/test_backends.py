"""Endpoint updates to probed readiness, against real HTTP upstreams on loopback."""

from __future__ import annotations

import asyncio

from kapa.core.endpoints import LocalEndpointSource
from kapa.core.services import Endpoint, ServiceKey

from activator.backends import Backends
from activator.config import ServiceSettings
from activator.probe import probe
from activator.throttler import Throttler
from tests.activator.upstream import Upstream
from tests.support import free_port

HELLO = ServiceKey("default", "hello")


async def test_probe_answers() -> None:
    upstream = await Upstream(ready=False).start()
    try:
        assert not await probe(upstream.endpoint)
        upstream.ready = True
        assert await probe(upstream.endpoint)
    finally:
        await upstream.stop()
    assert not await probe(Endpoint("127.0.0.1", free_port()))  # nothing listens


async def test_new_endpoint_is_used_the_moment_its_probe_answers_and_gone_ones_are_dropped() -> None:
    source = LocalEndpointSource()
    throttler = Throttler(ServiceSettings(HELLO, ()))
    backends = Backends(source, {HELLO: throttler})
    backends.start()
    upstream = await Upstream(ready=False).start()
    try:
        held = asyncio.create_task(throttler.acquire())
        source.set(HELLO, [upstream.endpoint])
        await asyncio.sleep(0.1)
        assert not held.done() and upstream.probes >= 3  # probed every ~10 ms while a request waits
        upstream.make_ready()
        pod = await asyncio.wait_for(held, 1)
        waited = asyncio.get_running_loop().time() - upstream.ready_at  # type: ignore[operator]
        assert pod.endpoint == upstream.endpoint and waited < 0.1
        throttler.release(pod)
        source.set(HELLO, [])
        await asyncio.sleep(0.01)
        assert throttler.ready_count == 0
    finally:
        await backends.close()
        await upstream.stop()


async def test_suspected_pod_is_reprobed_and_comes_back() -> None:
    source = LocalEndpointSource()
    throttler = Throttler(ServiceSettings(HELLO, ()))
    backends = Backends(source, {HELLO: throttler})
    backends.start()
    upstream = await Upstream().start()
    try:
        source.set(HELLO, [upstream.endpoint])
        await asyncio.sleep(0.05)
        assert throttler.ready_count == 1
        upstream.ready = False
        backends.suspect(HELLO, upstream.endpoint)
        assert throttler.ready_count == 0
        await asyncio.sleep(0.1)
        assert throttler.ready_count == 0
        upstream.ready = True
        await asyncio.sleep(0.1)
        assert throttler.ready_count == 1
    finally:
        await backends.close()
        await upstream.stop()
