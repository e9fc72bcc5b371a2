"""The public pieces of `Exchange` a handler calls before forwarding: header rewriting."""

from __future__ import annotations

import pytest

from kapa.relay import Exchange


def _exchange(head: bytes) -> Exchange:
    # set_request_header touches only the head, so no connection is needed.
    return Exchange(None, b"GET", b"/", head, head.lower(), True, False, 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nK-Mark: yes\r\n\r\n"),
        (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.0\r\nK-Mark: yes\r\n\r\n"),
        # Every earlier line of that name goes, whatever its case; neighbours stay in order.
        (
            b"GET / HTTP/1.1\r\nk-mark: forged\r\nHost: a\r\nK-MARK: again\r\nAccept: */*\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nK-Mark: yes\r\n\r\n",
        ),
        # A header whose name merely starts the same way is another header.
        (b"GET / HTTP/1.1\r\nK-Marker: 1\r\n\r\n", b"GET / HTTP/1.1\r\nK-Marker: 1\r\nK-Mark: yes\r\n\r\n"),
    ],
)
def test_set_request_header_adds_or_replaces(head: bytes, expected: bytes) -> None:
    exchange = _exchange(head)
    exchange.set_request_header(b"K-Mark", b"yes")
    assert exchange.head == expected
    assert exchange.head_lower == expected.lower()
