"""HTTP/1 edges through a real queue-proxy: framing and Host ambiguities are refused before the app sees
them, a malformed body is one 400 counted once, and a client that half-closes still gets its answer."""

from __future__ import annotations

import socket

import pytest

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy, get_json


def _exchange(port: int, data: bytes, half_close: bool = False) -> bytes:
    """Send raw bytes (then shut down the sending side if `half_close`); everything until the server closes."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _app_total(proxy: Proxy) -> int:
    return get_json(f"http://127.0.0.1:{proxy.app_port}/stats")["total"]  # type: ignore[index]


@pytest.mark.parametrize(
    "request_bytes",
    [
        # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
        b"POST /digest HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /sleep?ms=0 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET http://b/sleep?ms=0 HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
    ids=["http1.0-transfer-encoding", "two-hosts", "target-host-differs"],
)
def test_ambiguous_requests_get_400_and_never_reach_the_app(proxy: Proxy, request_bytes: bytes) -> None:
    total, bad = _app_total(proxy), proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_BAD_REQUEST)
    # A valid request pipelined behind it is not served either: nothing after refused input is read.
    answer = _exchange(proxy.port, request_bytes + b"GET /sleep?ms=0 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 1, answer
    assert b"Connection: close" in answer
    assert _app_total(proxy) == total
    assert proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_BAD_REQUEST) == bad + 1


def test_an_absolute_target_naming_the_host_is_served(proxy: Proxy) -> None:
    answer = _exchange(proxy.port, b"GET http://a:80/sleep?ms=0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"slept\n")


def test_a_bad_chunk_after_the_head_went_to_the_app_is_one_400_counted_once(proxy: Proxy) -> None:
    before = {code: proxy.metric(contract.REQUESTS, code_class=code) for code in ("4xx", "5xx")}
    answer = _exchange(
        proxy.port, b"POST /digest HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400 ") and b"malformed HTTP request" in answer
    assert proxy.metric(contract.REQUESTS, code_class="4xx") == before["4xx"] + 1
    assert proxy.metric(contract.REQUESTS, code_class="5xx") == before["5xx"]
    assert proxy.metric(contract.REQUESTS_IN_FLIGHT) == 0


def test_a_client_that_half_closes_after_its_requests_gets_every_answer(proxy: Proxy) -> None:
    answer = _exchange(
        proxy.port,
        b"GET /sleep?ms=50 HTTP/1.1\r\nHost: a\r\n\r\nGET /status?code=201 HTTP/1.1\r\nHost: a\r\n\r\n",
        half_close=True,
    )
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 201 ") == 1
