"""The h2c relay reads a response status from the first bytes of an HPACK block."""

from __future__ import annotations

import pytest
from hpack import Encoder

from kapa.relay.h2c import H2Stream, read_status, stream_status


@pytest.mark.parametrize("status", ["200", "204", "404", "500", "503", "302", "201", "429"])
@pytest.mark.parametrize("huffman", [True, False])
def test_read_status_from_an_hpack_block(status: str, huffman: bool) -> None:
    block = Encoder().encode([(":status", status), ("content-type", "text/plain")], huffman=huffman)
    read = read_status(block)
    assert read == int(status) or (huffman and read == int(status[0]) * 100)


def test_a_status_in_the_dynamic_table_is_unknown() -> None:
    encoder = Encoder()
    encoder.encode([(":status", "299")])  # now entry 62 of the encoder's dynamic table
    assert read_status(encoder.encode([(":status", "299")])) == 0


@pytest.mark.parametrize(
    ("status", "reset_by", "recorded"),
    [(204, None, 204), (0, None, 200), (0, "client", 499), (0, "server", 502), (503, "server", 503)],
)
def test_stream_status(status: int, reset_by: str | None, recorded: int) -> None:
    stream = H2Stream(1, 0.0)
    stream.status, stream.reset_by = status, reset_by
    assert stream_status(stream) == recorded
