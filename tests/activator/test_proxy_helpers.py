"""The small pure pieces of the activator's request path."""

from __future__ import annotations

import pytest

from kapa import contract

from activator.proxy import local_response_with_headers, mark_proxied, request_host


@pytest.mark.parametrize(
    ("head", "host"),
    [
        (b"get / http/1.1\r\nhost: hello.default\r\naccept: */*\r\n\r\n", b"hello.default"),
        (b"get / http/1.1\r\naccept: */*\r\nhost:   hello.default:8013  \r\n\r\n", b"hello.default:8013"),
        (b"get / http/1.1\r\naccept: */*\r\n\r\n", None),
        (b"get / http/1.1\r\nx-host: nope\r\n\r\n", None),
    ],
)
def test_request_host(head: bytes, host: bytes | None) -> None:
    assert request_host(head) == host


@pytest.mark.parametrize(
    "head",
    [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n"],
)
def test_mark_proxied_adds_one_header_line(head: bytes) -> None:
    marked = mark_proxied(head)
    line = f"{contract.PROXY_HEADER}: {contract.PROXY_HEADER_VALUE}\r\n".encode()
    assert marked.endswith(line + b"\r\n") and marked.replace(line, b"") == head


def test_local_response_with_headers() -> None:
    response = local_response_with_headers(503, b"full\n", True, b"Retry-After: 1\r\n", head_only=False)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n")
    assert b"Content-Length: 5" in head and b"Connection: keep-alive" in head and body == b"full\n"
    assert local_response_with_headers(503, b"full\n", False, b"X: y\r\n", head_only=True).endswith(b"\r\n\r\n")
