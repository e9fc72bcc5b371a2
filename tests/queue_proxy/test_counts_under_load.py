"""Many concurrent keep-alive connections against a fast app: every request answered and counted once."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from kapa.core import contract
from tests.queue_proxy.conftest import queue_proxy
from tests.support import free_port, running, wait_for_port

_REQUEST = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"


async def _client(port: int, requests: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = 0
    for _ in range(requests):
        writer.write(_REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(13) == b"Hello, world\n"
        answered += 1
    writer.close()
    return answered


async def test_every_request_is_answered_and_counted_once(tmp_path: Path) -> None:
    app_port = free_port()
    with running([sys.executable, "-m", "tests.queue_proxy.fast_upstream", str(app_port)]):
        wait_for_port(app_port)
        with queue_proxy(tmp_path, app_port, CONTAINER_CONCURRENCY="8") as proxy:
            answered = await asyncio.gather(*(_client(proxy.port, 250) for _ in range(40)))
            assert sum(answered) == 40 * 250
            await asyncio.sleep(0.05)
            assert await asyncio.to_thread(proxy.metric, contract.REQUESTS, code_class="2xx") == 40 * 250
            assert await asyncio.to_thread(proxy.metric, contract.REQUESTS_IN_FLIGHT) == 0
            assert await asyncio.to_thread(proxy.metric, contract.QUEUE_DEPTH) == 0
