"""Slow clients (slowloris) cannot hold connections: a request head must be complete within the header-read
timeout (else 408, or a plain close when nothing was sent), and an idle keep-alive connection is closed
after the idle timeout. A request that is being served is never cut by either."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy, queue_proxy

HEADER_READ_S = 0.5
IDLE_S = 1.0
#: The sweep runs every quarter of the shorter timeout; allow that plus scheduling noise.
LATE_S = HEADER_READ_S / 4 + 0.4

_REQUEST = b"GET /sleep?ms=0 HTTP/1.1\r\nHost: app\r\n\r\n"


@pytest.fixture(scope="module")
def slow_proxy(app_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    env = {contract.ENV_HEADER_READ_TIMEOUT_SECONDS: str(HEADER_READ_S), contract.ENV_IDLE_TIMEOUT_SECONDS: str(IDLE_S)}
    with queue_proxy(tmp_path_factory.mktemp("qp-slow"), app_port, **env) as running_proxy:
        yield running_proxy


def _connect(proxy: Proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when the close came (time.monotonic())."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic()


def _read_response(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_trickled_head_gets_408_at_the_header_read_timeout(slow_proxy: Proxy) -> None:
    before = slow_proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_BAD_REQUEST)
    with _connect(slow_proxy) as sock:
        opened = time.monotonic()
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # closed under us: the check below says whether it was in time
            time.sleep(0.02)
            if time.monotonic() - opened > HEADER_READ_S + LATE_S:
                break
        received, closed = _read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in received
    assert HEADER_READ_S <= closed - opened <= HEADER_READ_S + LATE_S + 0.1
    assert slow_proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_BAD_REQUEST) == before + 1


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(slow_proxy: Proxy) -> None:
    with _connect(slow_proxy) as sock:
        opened = time.monotonic()
        received, closed = _read_until_closed(sock)
    assert received == b""
    assert HEADER_READ_S <= closed - opened <= HEADER_READ_S + LATE_S


def test_an_idle_keep_alive_connection_is_closed_at_the_idle_timeout_not_before(slow_proxy: Proxy) -> None:
    with _connect(slow_proxy) as sock:
        # Requests spaced by more than the header-read timeout but less than the idle one keep it open.
        for _ in range(3):
            sock.sendall(_REQUEST)
            assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(IDLE_S * 0.6)
        sock.sendall(_REQUEST)
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        received, closed = _read_until_closed(sock)
    assert received == b""
    assert IDLE_S <= closed - answered <= IDLE_S + LATE_S


def test_a_later_head_on_a_keep_alive_connection_has_the_header_read_timeout(slow_proxy: Proxy) -> None:
    with _connect(slow_proxy) as sock:
        sock.sendall(_REQUEST)
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET / HTTP/1.1\r\nHo")
        started = time.monotonic()
        received, closed = _read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert HEADER_READ_S <= closed - started <= HEADER_READ_S + LATE_S


def test_a_request_being_served_outlives_both_timeouts(slow_proxy: Proxy) -> None:
    with _connect(slow_proxy) as sock:
        sock.sendall(b"GET /sleep?ms=%d HTTP/1.1\r\nHost: app\r\n\r\n" % int((IDLE_S + 0.5) * 1000))
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
        # A slow upload too: its head is complete, so the body may take its time.
        sock.sendall(b"POST /digest HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n\r\n")
        for byte in b"body":
            time.sleep(HEADER_READ_S * 0.8)
            sock.sendall(bytes([byte]))
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")

