"""HTTP/1.1 through the queue-proxy: keep-alive, streaming both ways, headers untouched."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import time
from collections.abc import Iterator

from tests.queue_proxy.conftest import Proxy


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_keep_alive_reuses_one_upstream_connection(proxy: Proxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    peers = set()
    for _ in range(20):
        conn.request("GET", "/peer")
        response = conn.getresponse()
        assert response.status == 200
        peers.add(response.read())
    conn.close()
    # A second client connection, after the first closed, gets the pooled upstream connection too.
    other = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    other.request("GET", "/peer")
    peers.add(other.getresponse().read())
    other.close()
    assert len(peers) == 1


def test_headers_pass_untouched_in_order(proxy: Proxy) -> None:
    sent = [
        ("Forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"),
        ("X-Forwarded-For", "192.0.2.60, 198.51.100.17"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "example.com"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("X-Mixed-Case", "Value With  Spaces"),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.putrequest("GET", "/headers?a=1&b=%20x", skip_accept_encoding=True)
    for name, value in sent:
        conn.putheader(name, value)
    conn.endheaders()
    received = json.loads(conn.getresponse().read())
    conn.close()
    received_pairs = [tuple(pair) for pair in received if pair[0] not in ("Host",)]
    assert received_pairs == sent


def test_chunked_upload_streams_without_buffering(proxy: Proxy) -> None:
    size = 96 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    expected = hashlib.sha256()
    before = _peak_rss_kib(proxy.process.pid)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            expected.update(block)
            yield block

    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    conn.request("POST", "/digest", body=body(), encode_chunked=True)
    response = conn.getresponse()
    result = json.loads(response.read())
    conn.close()
    assert response.status == 200
    assert result == {"size": size, "sha256": expected.hexdigest()}
    # The proxy held at most a few MiB of it at any time.
    assert _peak_rss_kib(proxy.process.pid) - before < 24 * 1024


def test_content_length_upload(proxy: Proxy) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("POST", "/digest", body=payload)
    result = json.loads(conn.getresponse().read())
    conn.close()
    assert result == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_download_streams_first_bytes_before_the_body_is_complete(proxy: Proxy) -> None:
    before = _peak_rss_kib(proxy.process.pid)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    start = time.monotonic()
    conn.request("GET", "/download?chunks=1500&kb=64&pause_ms=600")
    response = conn.getresponse()
    first = response.read1(65536)
    first_at = time.monotonic() - start
    total = len(first)
    while chunk := response.read1(1 << 20):
        total += len(chunk)
    done_at = time.monotonic() - start
    conn.close()
    assert total == 1500 * 64 * 1024
    assert first_at < 0.4 < 0.6 <= done_at  # the first chunk came through while the app paused
    assert _peak_rss_kib(proxy.process.pid) - before < 24 * 1024


def test_head_request_and_http_1_0(proxy: Proxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("HEAD", "/status?code=200")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == b""
    conn.request("GET", "/sleep?ms=0")  # the connection is still in step after HEAD
    assert conn.getresponse().read() == b"slept\n"
    conn.close()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /sleep?ms=0 HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] and data.endswith(b"slept\n")


def test_pipelined_requests_are_answered_in_order(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            b"GET /sleep?ms=100 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /status?code=201 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /status?code=202 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"201", b"202"]


def test_expect_100_continue_passes_the_interim_response(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"POST /digest HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello")
        final = b""
        while b"sha256" not in final:
            final += sock.recv(65536)
    assert re.match(rb"HTTP/1\.1 200 ", final)
    assert hashlib.sha256(b"hello").hexdigest().encode() in final
