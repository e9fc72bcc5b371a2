"""The small pure pieces of the activator's request path."""

from __future__ import annotations

import pytest

from kapa import contract

from activator.proxy import mark_proxied, request_has_body, request_host


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



@pytest.mark.parametrize(
    ("head", "has_body"),
    [
        (b"get / http/1.1\r\nhost: a\r\n\r\n", False),
        (b"post / http/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n", False),
        (b"post / http/1.1\r\ncontent-length: 12\r\nhost: a\r\n\r\n", True),
        (b"post / http/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n", True),
    ],
)
def test_request_has_body(head: bytes, has_body: bool) -> None:
    assert request_has_body(head) is has_body
