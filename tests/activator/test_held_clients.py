"""A request held for a service with no ready pod, its upload unread, whose client leaves: it is let go
then, so its concurrency stops being reported, its queue place is free, and no pod ever gets it."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import aiohttp
import pytest

from kapa.core import contract
from tests.activator.harness import RunningActivator, activator, metric_value
from tests.activator.test_activator import HELLO, HOST, get, hello, session, wait_for
from tests.activator.upstream import Upstream
from tests.queue_proxy.test_held_clients import unsent


async def _until_held(act: RunningActivator, client: aiohttp.ClientSession, count: int) -> None:
    async def held() -> bool:
        return metric_value(await act.metrics(client), contract.ACTIVATOR_HELD_REQUESTS) == count

    await wait_for(held, timeout_s=10)


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_held_upload_whose_client_leaves_is_let_go_and_never_forwarded(tmp_path: Path, how: str) -> None:
    upstream = await Upstream(ready=False).start()
    try:
        async with activator(tmp_path, [hello()], "--queue-limit", "1") as act, session() as client:
            await act.set_endpoints(client, HELLO, [upstream.endpoint])  # a pod that is not ready yet
            _, writer = await asyncio.open_connection("127.0.0.1", act.port)
            writer.write(
                b"POST /?id=gone HTTP/1.1\r\nHost: hello.default\r\nContent-Length: %d\r\n\r\n" % (8 << 20)
                + b"x" * (64 << 10)
            )
            await _until_held(act, client, 1)
            sock = writer.transport.get_extra_info("socket")
            while unsent(sock):  # all of it in the activator's kernel, so a FIN is not queued behind it
                await asyncio.sleep(0.01)
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
            await _until_held(act, client, 0)

            # Its place in the queue (--queue-limit 1) is free: the next request is held, not refused.
            task = asyncio.create_task(get(client, f"{act.url}/?id=next", headers=HOST))
            await _until_held(act, client, 1)
            upstream.make_ready()
            status, body, _ = await task
            assert status == 200 and body.startswith("id=next ")
            assert dict(upstream.served) == {"next": 1}  # never the one whose client left
            text = await act.metrics(client)
            assert metric_value(text, contract.ACTIVATOR_HELD_REQUESTS) == 0
            assert metric_value(text, contract.REQUESTS_IN_FLIGHT) == 0
            assert metric_value(text, contract.REQUESTS, code_class="4xx") == 1  # 499: client closed request
            # Nothing is reported as concurrency any more.
            first = metric_value(await act.metrics(client), contract.CONCURRENCY_SECONDS)
            await asyncio.sleep(0.2)
            assert metric_value(await act.metrics(client), contract.CONCURRENCY_SECONDS) == first
    finally:
        await upstream.stop()
