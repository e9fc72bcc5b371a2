"""The Host header, and whether an absolute-form request target agrees with it (pure functions)."""

from __future__ import annotations

import pytest

from kapa.relay import request_host
from kapa.relay.http1 import target_is_host


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
    ("url", "host", "same"),
    [
        (b"http://a.example/x?y=1", b"a.example", True),
        (b"HTTP://A.Example", b"a.example", True),
        (b"http://a.example:80/x", b"a.example", True),  # the scheme's default port is the same origin
        (b"http://a.example/x", b"a.example:80", True),
        (b"https://a.example:443/", b"a.example", True),
        (b"http://a.example:8080/x", b"a.example:8080", True),
        (b"http://a.example?q", b"a.example", True),
        (b"http://a.example:8080/x", b"a.example", False),
        (b"http://b.example/x", b"a.example", False),
        (b"http://a.example:443/", b"a.example", False),  # 443 is not http's default
        (b"http://user@a.example/", b"a.example", False),  # userinfo: RFC 9110 4.2.4, taken as another host
        (b"http://a.example/", None, False),
    ],
)
def test_an_absolute_target_must_name_the_host_of_the_host_header(url: bytes, host: bytes | None, same: bool) -> None:
    head = b"get " + url.lower() + b" http/1.1\r\n" + (b"host: " + host + b"\r\n" if host else b"") + b"\r\n"
    assert target_is_host(url, head) is same
