"""The small pure pieces of the activator's request path."""

from __future__ import annotations

import pytest

from activator.proxy import request_has_body


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
