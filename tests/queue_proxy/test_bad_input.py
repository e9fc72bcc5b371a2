"""Bad input gets a clear answer and disturbs nothing else: 400, 431, 502, a cut response."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy, get_json, queue_proxy
from tests.support import free_port


def _exchange(port: int, data: bytes, timeout_s: float = 5) -> bytes:
    """Send raw bytes; return everything until the server closes (or the timeout)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def _app_total(proxy: Proxy) -> int:
    """Requests the app has received since it started (it counts them as they arrive)."""
    return get_json(f"http://127.0.0.1:{proxy.app_port}/stats")["total"]  # type: ignore[index]


def _refusals(proxy: Proxy) -> tuple[float, float]:
    """(bad-request rejections, 4xx responses) in the proxy's metrics."""
    return (
        proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_BAD_REQUEST),
        proxy.metric(contract.REQUESTS, code_class="4xx"),
    )


@pytest.mark.parametrize(
    ("request_bytes", "never_forwarded"),
    [
        (b"GARBAGE\r\n\r\n", True),
        (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header Name: x\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", True),
        # The chunk-size error is inside a body: the head may have gone to the app already (whether it has
        # depends on a pooled connection being at hand), and the answer is still the proxy's 400.
        (b"POST /digest HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n", False),
    ],
    ids=["request-line", "version", "header-name", "content-length", "chunk-size"],
)
def test_malformed_requests_get_400_and_others_are_unaffected(
    proxy: Proxy, request_bytes: bytes, never_forwarded: bool
) -> None:
    total, (rejected, client_errors) = _app_total(proxy), _refusals(proxy)
    slow: list[bytes] = []
    other = threading.Thread(target=lambda: slow.append(urllib.request.urlopen(f"{proxy.url}/sleep?ms=300").read()))
    other.start()
    time.sleep(0.05)
    answer = _exchange(proxy.port, request_bytes)
    other.join()
    # What reached the app: the concurrent request, and nothing of the malformed one (a bad head is never
    # forwarded). Checked first: a relay that forwarded it would also relay the app's own 400.
    if never_forwarded:
        assert _app_total(proxy) == total + 1
    # Counted once as a bad request and once as a 4xx response (see test_http1_edges for the body case).
    assert _refusals(proxy) == (rejected + 1, client_errors + 1)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"malformed HTTP request" in answer
    assert slow == [b"slept\n"]
    assert proxy.process.poll() is None


def test_oversized_head_gets_431(proxy: Proxy) -> None:
    before = proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_BAD_REQUEST)
    total = _app_total(proxy)
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(80)) + b"\r\n"
    assert _exchange(proxy.port, many).startswith(b"HTTP/1.1 431 ")
    # One header line far larger than the limit, never finished: refused without waiting for its end.
    huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Huge: " + b"z" * (200 * 1024)
    assert _exchange(proxy.port, huge).startswith(b"HTTP/1.1 431 ")
    assert proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_BAD_REQUEST) == before + 2
    assert _app_total(proxy) == total  # neither head was forwarded
    assert urllib.request.urlopen(f"{proxy.url}/sleep?ms=0").read() == b"slept\n"


def test_app_closing_mid_response_closes_only_that_request(proxy: Proxy) -> None:
    answer = _exchange(proxy.port, b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"0123456789")  # then the close
    assert urllib.request.urlopen(f"{proxy.url}/sleep?ms=0").read() == b"slept\n"


def test_app_refusing_connections_gets_502(tmp_path: Path) -> None:
    with queue_proxy(tmp_path, free_port(), wait_ready=False) as proxy:
        answer = _exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 502 ")
        assert b"could not connect to the app" in answer
        # The connection stays usable for the next request, and the process is fine.
        twice = _exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert twice.count(b"HTTP/1.1 502 ") == 2
        assert proxy.metric(contract.REJECTED_REQUESTS, reason=contract.REASON_UPSTREAM_ERROR) == 3
        assert proxy.metric(contract.REQUESTS, code_class="5xx") == 3
        assert proxy.process.poll() is None
