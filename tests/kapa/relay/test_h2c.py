"""The h2c relay reads a response status from the first bytes of an HPACK block; and, on a real relay between
a client that breaks the rules and a real h2c app, it counts a stream in flight exactly while the app serves
it, and answers malformed frames with a connection error. Also the HTTP/1 side's refusal of `PRI`, the
HTTP/2 preface's method, without the rest of the preface."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from kapa.relay import Address, H2cTunnel
from kapa.relay.h2c import H2Stream, read_status, stream_status
from tests.kapa.relay.h2_peers import CANCEL, H2App, RawH2Client, h2_app
from tests.kapa.relay.harness import EchoUpstream, Forwarding, relay_server, until

FRAME_SIZE_ERROR = 0x6
#: Room for the relay to act on what it was sent, before checking that it did not.
_SETTLE_S = 0.2


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


class _CountingStreams(Forwarding):
    """Forwards h2c connections to the app and keeps the streams in flight, as the proxies count them."""

    def __init__(self, upstream: Address) -> None:
        super().__init__(upstream)
        self.in_flight: dict[int, H2Stream] = {}

    def h2c_connection(self, tunnel: H2cTunnel) -> None:
        tunnel.forward(self.upstream)

    def stream_opened(self, stream: H2Stream) -> None:
        assert stream.stream_id not in self.in_flight, "opened twice"
        self.in_flight[stream.stream_id] = stream

    def stream_closed(self, stream: H2Stream) -> None:
        del self.in_flight[stream.stream_id]


@asynccontextmanager
async def _relayed(answer_at_once: bool) -> AsyncIterator[tuple[RawH2Client, H2App, _CountingStreams]]:
    """A client connected through a real relay to an `H2App`: (client, app, the relay's handler)."""
    async with h2_app(answer_at_once) as (app, app_port):
        streams = _CountingStreams(("127.0.0.1", app_port))
        async with relay_server(streams) as (_, port):
            client = await RawH2Client.connect(port)
            try:
                yield client, app, streams
            finally:
                await client.close()


def _response_end(stream_id: int) -> Callable[[Frame], bool]:
    return lambda frame: isinstance(frame, HeadersFrame) and frame.stream_id == stream_id and "END_STREAM" in frame.flags


async def _one_stream_at_the_app(client: RawH2Client, app: H2App, streams: _CountingStreams) -> H2Stream:
    """Stream 1 opened (its client side left open), at the app and counted."""
    await client.send(client.headers(1, end_stream=False))
    await until(lambda: app.paths() == ["/"] and list(streams.in_flight) == [1])
    return streams.in_flight[1]


async def test_a_reset_ends_a_stream_only_once_its_payload_is_in() -> None:
    """The app takes RST_STREAM once the frame is whole: a client that withholds its last bytes still has
    its stream served there, and counted."""
    async with _relayed(answer_at_once=False) as (client, app, streams):
        await _one_stream_at_the_app(client, app, streams)
        reset = client.reset(1)
        await client.send(reset[:12])
        await asyncio.sleep(_SETTLE_S)
        assert list(streams.in_flight) == [1] and app.resets == []
        await client.send(reset[12:])
        await until(lambda: app.resets == [1] and not streams.in_flight)
        app.answer_at_once = True
        await client.send(client.headers(3))  # the connection serves on
        await client.until(_response_end(3))
        assert client.statuses == {3: 200} and client.goaway() is None
        await until(lambda: not streams.in_flight)


@pytest.mark.parametrize("length", [3, 132])
async def test_a_reset_whose_length_is_not_4_is_a_connection_error(length: int) -> None:
    """RFC 9113 6.4: FRAME_SIZE_ERROR, for the connection. The relay answers it itself (GOAWAY, and the
    close, which ends the stream at the app too): the app would wait for the rest of a longer frame."""
    async with _relayed(answer_at_once=False) as (client, app, streams):
        stream = await _one_stream_at_the_app(client, app, streams)
        header = length.to_bytes(3, "big") + bytes((0x3, 0)) + (1).to_bytes(4, "big")
        await client.send(header + CANCEL.to_bytes(4, "big")[:length])
        goaway = await client.until(lambda frame: isinstance(frame, GoAwayFrame), timeout_s=5)
        assert (goaway.error_code, goaway.last_stream_id) == (FRAME_SIZE_ERROR, 1)  # type: ignore[attr-defined]
        await client.until_closed()
        await until(lambda: not streams.in_flight and app.open_connections == 0)
        assert app.resets == [] and stream_status(stream) == 499


def _split_header_block(client: RawH2Client, path: str, where: str) -> tuple[bytes, bytes]:
    """A request (END_STREAM) in two writes: cut inside its HEADERS frame, or sent as HEADERS without
    END_HEADERS and then a CONTINUATION frame."""
    whole = client.headers(1, path=path)
    if where == "inside the HEADERS frame":
        return whole[:100], whole[100:]  # past the 64 payload bytes the relay looks at
    block = whole[9:]
    first: Frame = HeadersFrame(1, block[:20], flags=["END_STREAM"])
    rest: Frame = ContinuationFrame(1, block[20:], flags=["END_HEADERS"])
    return first.serialize(), rest.serialize()


@pytest.mark.parametrize("where", ["inside the HEADERS frame", "before a CONTINUATION frame"])
async def test_a_stream_counts_once_its_header_block_is_whole(where: str) -> None:
    """The app starts a request once its header block is whole; until then a stream counted would be
    phantom load, for as long as the client withholds the rest."""
    async with _relayed(answer_at_once=False) as (client, app, streams):
        path = "/" + "p" * 200
        first, rest = _split_header_block(client, path, where)
        await client.send(first)
        await asyncio.sleep(_SETTLE_S)
        assert not streams.in_flight and app.requests == []
        await client.send(rest)
        await until(lambda: app.paths() == [path] and list(streams.in_flight) == [1])
        app.answer_all()
        await client.until(_response_end(1))
        assert client.statuses == {1: 200}
        await until(lambda: not streams.in_flight)


@pytest.mark.parametrize("then", ["the client ends its frame", "the app answers first", "the client leaves"])
async def test_a_cancelled_stream_counts_until_the_app_has_the_reset(then: str) -> None:
    """The relay's RST_STREAM reaches the app between two of the client's frames: while the client is inside
    one, the app still serves the stream, which stays counted until the reset is through, the app ends the
    stream itself, or the connection ends. The client is told at once."""
    async with _relayed(answer_at_once=False) as (client, app, streams):
        body = client.data(1, b"x" * 100, end_stream=False)
        await client.send(client.headers(1, end_stream=False) + body[:19])  # 10 of the 100 bytes
        await until(lambda: app.paths() == ["/"] and list(streams.in_flight) == [1])
        await asyncio.sleep(_SETTLE_S)  # the DATA frame's first bytes read too
        stream = streams.in_flight[1]
        stream.cancel(504)
        await client.until(lambda frame: isinstance(frame, RstStreamFrame) and frame.stream_id == 1)
        assert client.resets(CANCEL) == [1]
        await asyncio.sleep(_SETTLE_S)
        assert list(streams.in_flight) == [1] and app.resets == []
        if then == "the client ends its frame":
            await client.send(body[19:])
            await until(lambda: app.resets == [1])
        elif then == "the app answers first":
            app.answer_all()
        else:
            await client.close()
        await until(lambda: not streams.in_flight)
        assert stream_status(stream) == 504


@pytest.mark.parametrize("request_line", [b"PRI *", b"PRI /x"])
async def test_pri_without_the_rest_of_the_preface_is_refused(request_line: bytes) -> None:
    """`PRI <target>` without a version is HTTP/0.9 to llhttp, but PRI is the HTTP/2 preface's method (RFC
    9113 3.4): an llhttp app waits for the rest of a preface, so forwarded it would never be answered."""
    app = EchoUpstream()
    handler = Forwarding(await app.start())
    try:
        async with relay_server(handler) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_line + b"\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)  # and the close
            assert answer.startswith(b"HTTP/1.1 400 ")
            assert handler.received == [] and handler.malformed == [400] and app.requests == []
            writer.close()
    finally:
        await app.stop()
