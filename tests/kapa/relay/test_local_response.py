"""The relay's own responses are complete HTTP/1.1 messages."""

from __future__ import annotations

import httptools

from kapa.relay import local_response


class _Collect:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def test_local_response_parses_with_extra_headers_and_keep_alive() -> None:
    collected = _Collect()
    parser = httptools.HttpResponseParser(collected)
    parser.feed_data(local_response(503, b"busy\n", keep_alive=True, extra_headers=b"Retry-After: 1\r\n"))
    assert collected.complete and parser.get_status_code() == 503 and collected.body == b"busy\n"
    assert (b"Retry-After", b"1") in collected.headers and (b"Connection", b"keep-alive") in collected.headers


def test_head_only_response_announces_the_body_without_sending_it() -> None:
    response = local_response(200, b"ready\n", keep_alive=False, head_only=True)
    assert response.endswith(b"Content-Length: 6\r\nConnection: close\r\n\r\n")
