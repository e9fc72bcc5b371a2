"""CONTAINER_CONCURRENCY: at most that many at the app, a FIFO queue of 10x behind, 503 beyond, 504 past
the timeout, and the slot freed however a request ends."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time
from pathlib import Path

import aiohttp

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy, get_json, queue_proxy


#: How long the app takes per request in the queueing test.
SERVICE_S = 0.6


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, float]:
    start = time.monotonic()
    async with session.get(url) as response:
        return response.status, await response.text(), time.monotonic() - start


def _reset(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.app_port)) as sock:
        sock.sendall(b"POST /reset HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        sock.recv(1024)


def _app_stats(proxy: Proxy) -> dict[str, int]:
    return get_json(f"http://127.0.0.1:{proxy.app_port}/stats")  # type: ignore[return-value]


async def test_limit_queues_in_order_and_refuses_beyond_the_queue(app_port: int, tmp_path: Path) -> None:
    with queue_proxy(tmp_path, app_port, CONTAINER_CONCURRENCY="2") as proxy:
        _reset(proxy)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            # 2 at the app + 20 queued fit; 5 more are refused at once. Each request takes SERVICE_S at the
            # app, long enough for all 27 to arrive first even on a busy machine; once the 5th is refused
            # every request has arrived, and none has left the app yet.
            tasks = [asyncio.create_task(_get(session, f"{proxy.url}/sleep?ms={SERVICE_S * 1000:.0f}"))
                     for _ in range(27)]
            deadline = time.monotonic() + SERVICE_S / 2
            while await asyncio.to_thread(proxy.metric, contract.REJECTED_REQUESTS, reason=contract.REASON_QUEUE_FULL) < 5:
                assert time.monotonic() < deadline, "27 requests did not all arrive within half a service time"
                await asyncio.sleep(0.02)
            assert await asyncio.to_thread(proxy.metric, contract.QUEUE_DEPTH) == 20
            assert await asyncio.to_thread(proxy.metric, contract.REQUESTS_IN_FLIGHT) == 22
            results = await asyncio.gather(*tasks)
        refused = [r for r in results if r[0] == 503]
        served = [r for r in results if r[0] == 200]
        assert len(refused) == 5 and len(served) == 22
        assert all("queue is full" in text and elapsed < 0.1 for _, text, elapsed in refused)
        # 22 requests of SERVICE_S, two at a time: about 11 rounds for the last one.
        assert max(elapsed for _, _, elapsed in served) >= 10 * SERVICE_S
        stats = _app_stats(proxy)
        assert stats["max"] == 2 and stats["total"] == 22
        assert proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_QUEUE_FULL) == 5
        assert proxy.metric(contract.QUEUED_REQUESTS) == 20, "every request that found both slots taken waited"
        assert proxy.metric(contract.QUEUE_DEPTH) == 0
        assert proxy.metric(contract.REQUESTS_IN_FLIGHT) == 0


async def test_timeout_gives_504_waiting_and_at_the_app(app_port: int, tmp_path: Path) -> None:
    with queue_proxy(tmp_path, app_port, CONTAINER_CONCURRENCY="1", REVISION_TIMEOUT_SECONDS="0.5") as proxy:
        async with aiohttp.ClientSession() as session:
            # A response that has started is not cut by the timeout: this one holds the slot for 1.5 s.
            holder = asyncio.create_task(_get(session, f"{proxy.url}/download?chunks=2&kb=1&pause_ms=1500"))
            await asyncio.sleep(0.1)
            status_wait, text_wait, elapsed_wait = await _get(session, f"{proxy.url}/sleep?ms=10")
            assert status_wait == 504 and "waiting for a slot" in text_wait
            assert 0.5 <= elapsed_wait < 0.8
            assert (await holder)[0] == 200
            status_app, text_app, elapsed_app = await _get(session, f"{proxy.url}/sleep?ms=3000")
            assert status_app == 504 and "at the app" in text_app
            assert 0.5 <= elapsed_app < 0.8
            # The slot is free again: a quick request passes.
            assert (await _get(session, f"{proxy.url}/sleep?ms=10"))[0] == 200
        assert proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_TIMEOUT) == 2
        assert proxy.metric(contract.REQUESTS, code_class="5xx") == 2


async def test_client_disconnects_do_not_leak_slots(app_port: int, tmp_path: Path) -> None:
    with queue_proxy(tmp_path, app_port, CONTAINER_CONCURRENCY="1") as proxy:
        # One at the app and four waiting, then every client vanishes (a reset: a FIN alone would be a
        # half-close, and the one at the app would still get its answer; see test_held_clients).
        sockets = []
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", proxy.port))
            sock.sendall(b"GET /sleep?ms=1500 HTTP/1.1\r\nHost: a\r\n\r\n")
            sockets.append(sock)
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(proxy.metric, contract.QUEUE_DEPTH) == 4
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(proxy.metric, contract.REQUESTS_IN_FLIGHT) == 0
        assert await asyncio.to_thread(proxy.metric, contract.QUEUE_DEPTH) == 0
        async with aiohttp.ClientSession() as session:
            status, _, elapsed = await _get(session, f"{proxy.url}/sleep?ms=10")
        assert status == 200 and elapsed < 0.5
        assert proxy.metric(contract.REQUESTS, code_class="4xx") == 5  # recorded as 499, client closed request


async def test_a_queued_upload_waits_unread_and_then_streams_whole(app_port: int, tmp_path: Path) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    with queue_proxy(tmp_path, app_port, CONTAINER_CONCURRENCY="1") as proxy:
        async with aiohttp.ClientSession() as session:
            holder = asyncio.create_task(_get(session, f"{proxy.url}/sleep?ms=700"))
            await asyncio.sleep(0.1)
            async with session.post(f"{proxy.url}/digest", data=payload) as response:
                result = await response.json()
            assert (await holder)[0] == 200
    assert result == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
