"""The edges of the HTTP/1 relay, on a real relay server and real upstreams on loopback: bytes after an
upgrade request, pipelining in bulk, a malformed body after the head went upstream, half-closing clients."""

from __future__ import annotations

import asyncio
import gc
import re
import socket

import pytest

from kapa.relay import FAILURE_BAD_REQUEST, Exchange, RelayServer
from kapa.relay.http1 import MAX_PIPELINED, ServerProtocol
from tests.kapa.relay.harness import EchoUpstream, Forwarding, ScriptedUpstream, relay_server, until

_UPGRADES = {
    "websocket": (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ),
    "connect": (
        b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n",
        b"HTTP/1.1 200 Connection Established\r\n\r\n",
    ),
}


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


@pytest.mark.parametrize("kind", sorted(_UPGRADES))
async def test_bytes_after_an_upgrade_request_reach_the_app_only_once_it_accepts(kind: str) -> None:
    request, acceptance = _UPGRADES[kind]
    app = ScriptedUpstream()
    handler = Forwarding(await app.start())
    try:
        async with relay_server(handler) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request + b"EARLY BYTES")
            await until(lambda: bool(app.connections) and app.connections[0].received.endswith(b"\r\n\r\n"))
            await asyncio.sleep(0.2)  # room for anything else the relay would send before the answer
            upstream = app.connections[0]
            assert upstream.received == request, "bytes went to the app before it accepted the upgrade"
            assert upstream.transport is not None
            upstream.transport.write(acceptance + b"from the app")
            await until(lambda: upstream.received == request + b"EARLY BYTES")
            assert await reader.readexactly(len(acceptance) + 12) == acceptance + b"from the app"
            writer.write(b" and more")  # a pipe now, both ways
            await until(lambda: upstream.received.endswith(b"EARLY BYTES and more"))
            writer.close()
            await until(lambda: len(handler.finished) == 1)
    finally:
        await app.stop()


async def test_bytes_after_a_declined_upgrade_never_reach_the_app() -> None:
    """The bytes after the upgrade request look like a request; the app answers the upgrade request as a
    plain one. They are dropped with the connection, never parsed as a request nor sent to the app."""
    request = _UPGRADES["websocket"][0]
    smuggled = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    app = ScriptedUpstream()
    handler = Forwarding(await app.start())
    try:
        async with relay_server(handler) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request + smuggled)
            await until(lambda: bool(app.connections) and app.connections[0].received.endswith(b"\r\n\r\n"))
            await asyncio.sleep(0.2)
            upstream = app.connections[0]
            assert upstream.transport is not None
            upstream.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nno\n")
            answer = await _read_until_closed(reader)
            assert answer == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nno\n"  # and the close
            assert handler.received == [b"/ws"] and handler.finished == [(200, None)]
            assert upstream.received == request
            writer.close()
    finally:
        await app.stop()


def _server_protocol(relay: RelayServer) -> ServerProtocol:
    (connection,) = [c for c in relay.connections if isinstance(c, ServerProtocol)]
    return connection


async def _connect(relay: RelayServer, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await until(lambda: any(isinstance(c, ServerProtocol) for c in relay.connections))
    return reader, writer


async def _send_in_one_read(relay: RelayServer, writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send `data` while the relay does not read, so that it reads as much as the kernel holds at once (all
    of it, for up to ~100 KB on Linux loopback)."""
    server_side = _server_protocol(relay).transport
    server_side.pause_reading()
    writer.write(data)
    await until(lambda: writer.transport.get_write_buffer_size() == 0)
    server_side.resume_reading()


async def test_many_small_pipelined_requests_in_one_read_are_all_answered_in_order() -> None:
    """More than MAX_HEAD_BYTES of complete requests in one read, then half a head: the read is not taken
    for one oversized head (431 and a dropped connection, before)."""
    count = 2_500
    requests = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(count))
    assert len(requests) > 64 * 1024
    app = EchoUpstream()
    handler = Forwarding(await app.start())
    try:
        async with relay_server(handler) as (relay, port):
            reader, writer = await _connect(relay, port)
            await _send_in_one_read(relay, writer, requests + b"GET /last HTTP/1.1\r\nHo")
            await until(lambda: bool(handler.received))  # that read is parsed
            writer.write(b"st: a\r\nConnection: close\r\n\r\n")
            answer = await _read_until_closed(reader)
            writer.close()
    finally:
        await app.stop()
    bodies = re.findall(rb"HTTP/1\.1 200 OK\r\nContent-Length: \d+\r\n\r\n(/\w+)\n", answer)
    assert bodies == [b"/%d" % i for i in range(count)] + [b"/last"]
    assert handler.malformed == [] and len(handler.finished) == count + 1


def _live_exchanges() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Exchange))


async def test_pipelined_requests_beyond_the_bound_wait_unread_then_are_all_answered() -> None:
    """While the first request is held, a client pipelines 3,000 more: the relay keeps at most
    MAX_PIPELINED of them parsed (the rest stays unread), and answers them all, in order, once it can."""
    count = 3_000
    app = EchoUpstream()
    handler = Forwarding(await app.start())
    handler.holding = True
    try:
        async with relay_server(handler) as (relay, port):
            before = _live_exchanges()
            reader, writer = await _connect(relay, port)
            await _send_in_one_read(relay, writer, b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(count)))
            await until(lambda: len(handler.held) == 1)
            await asyncio.sleep(0.2)  # room to parse whatever the relay would
            assert _live_exchanges() - before <= MAX_PIPELINED + 1
            assert _server_protocol(relay).paused  # not reading the client: backpressure
            handler.release()
            answer = b""
            while answer.count(b"HTTP/1.1 200 ") < count:
                answer += await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
    finally:
        await app.stop()
    assert re.findall(rb"\r\n\r\n(/\d+)\n", answer) == [b"/%d" % i for i in range(count)]
    assert app.requests == [b"/%d" % i for i in range(count)]


async def test_requests_pipelined_behind_a_body_beyond_the_bound_are_refused_in_their_turn() -> None:
    """A read that begins inside a body is parsed whole (no scan of upload bytes): past MAX_PIPELINED
    requests behind the body's end, the next is refused with 429 after the ones before it are answered,
    and nothing after it is read."""
    app = EchoUpstream()
    handler = Forwarding(await app.start())
    try:
        async with relay_server(handler) as (relay, port):
            reader, writer = await _connect(relay, port)
            writer.write(b"POST /upload HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
            await until(lambda: handler.received == [b"/upload"])
            pipelined = b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(MAX_PIPELINED + 10))
            await _send_in_one_read(relay, writer, b"hello" + pipelined)
            answer = await _read_until_closed(reader)
            writer.close()
    finally:
        await app.stop()
    assert re.findall(rb"\r\n\r\n(/\w+)\n", answer) == [b"/upload"] + [b"/%d" % i for i in range(MAX_PIPELINED)]
    assert answer.count(b"HTTP/1.1 429 ") == 1 and answer.endswith(b"pipelined requests waiting\n")
    assert handler.malformed == [429] and len(handler.finished) == MAX_PIPELINED + 1


async def test_a_bad_chunk_after_the_head_went_upstream_is_one_400() -> None:
    app = ScriptedUpstream()
    handler = Forwarding(await app.start())
    try:
        async with relay_server(handler) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await until(lambda: bool(app.connections) and app.connections[0].received.endswith(b"hello\r\n"))
            writer.write(b"ZZZ\r\n")
            answer = await _read_until_closed(reader)
            writer.close()
            await until(lambda: app.connections[0].transport is not None and app.connections[0].transport.is_closing())
    finally:
        await app.stop()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer
    assert handler.finished == [(400, FAILURE_BAD_REQUEST)]  # one outcome, reported once
    assert handler.malformed == []


async def test_a_client_that_half_closes_after_its_requests_gets_every_answer() -> None:
    app = EchoUpstream()
    handler = Forwarding(await app.start())
    try:
        async with relay_server(handler) as (_, port):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
                sock.shutdown(socket.SHUT_WR)
                sock.setblocking(False)
                answer = b""
                while chunk := await asyncio.get_running_loop().sock_recv(sock, 65536):
                    answer += chunk
    finally:
        await app.stop()
    assert re.findall(rb"\r\n\r\n(/\w+)\n", answer) == [b"/one", b"/two"]
    assert handler.finished == [(200, None), (200, None)]
