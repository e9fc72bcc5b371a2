"""A request queued at CONTAINER_CONCURRENCY whose client leaves while it waits, its body unread, is ended
then: not counted in flight, not in the queue, never sent to the app."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from pathlib import Path

import pytest

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy, get_json, queue_proxy


def _app_stats(proxy: Proxy) -> dict[str, int]:
    return get_json(f"http://127.0.0.1:{proxy.app_port}/stats")  # type: ignore[return-value]


def unsent(sock: socket.socket) -> int:
    """Bytes of `sock`'s not yet taken by the peer's kernel (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0"))[0]


async def _until(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await asyncio.to_thread(condition):
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def leave(sock: socket.socket, how: str) -> None:
    """The client goes: a reset (RST), or a close (FIN) once all it sent has reached the peer."""
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_queued_upload_whose_client_leaves_is_dropped_unsent(app_port: int, tmp_path: Path, how: str) -> None:
    with queue_proxy(tmp_path, app_port, CONTAINER_CONCURRENCY="1") as proxy:
        with socket.create_connection(("127.0.0.1", app_port), timeout=10) as sock:  # zero the app's counts
            sock.sendall(b"POST /reset HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            sock.recv(1024)
        # The slot: an upload at the app that ends when the test sends the rest of its body.
        holder = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        holder.sendall(b"POST /digest HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        await _until(lambda: _app_stats(proxy)["current"] == 1)
        # Queued behind it: an 8 MiB upload, of which a little more than the proxy buffers is sent.
        queued = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        head = b"POST /digest HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (8 << 20)
        queued.sendall(head + b"x" * (300 << 10))
        await _until(lambda: proxy.metric(contract.QUEUE_DEPTH) == 1)
        await _until(lambda: unsent(queued) == 0)
        leave(queued, how)

        await _until(lambda: proxy.metric(contract.QUEUE_DEPTH) == 0)
        await _until(lambda: proxy.metric(contract.REQUESTS_IN_FLIGHT) == 1)  # the holder alone
        assert proxy.metric(contract.REQUESTS, code_class="4xx") == 1  # 499: the client closed the request

        holder.sendall(b"67890")
        assert holder.recv(65536).startswith(b"HTTP/1.1 200 ")
        holder.close()
        await _until(lambda: proxy.metric(contract.REQUESTS_IN_FLIGHT) == 0)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:  # the slot is free
            sock.sendall(b"GET /sleep?ms=0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        stats = _app_stats(proxy)
        assert stats["total"] == 2 and stats["max"] == 1  # the holder and the last one: never the upload
