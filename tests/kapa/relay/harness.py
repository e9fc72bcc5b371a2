"""A real relay server on loopback for the relay's own tests, with a handler that forwards and records, and
small upstreams: one that echoes each request's target, one whose answers the test writes itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httptools

from kapa.relay import Address, Exchange, H2cTunnel, H2Stream, RelayServer


class Forwarding:
    """A relay `Handler` that forwards every request to `upstream` (or keeps it while `holding`), and
    records what the relay reports."""

    def __init__(self, upstream: Address) -> None:
        self.upstream = upstream
        self.holding = False
        self.held: list[Exchange] = []
        self.received: list[bytes] = []
        #: (status, failure) of each finished exchange, in the order they finished.
        self.finished: list[tuple[int, str | None]] = []
        self.malformed: list[int] = []

    def request_received(self, exchange: Exchange) -> None:
        self.received.append(exchange.url)
        if self.holding:
            self.held.append(exchange)
        else:
            exchange.forward(self.upstream)

    def release(self) -> None:
        """Stop holding; forward what was held."""
        self.holding = False
        held, self.held = self.held, []
        for exchange in held:
            exchange.forward(self.upstream)

    def request_finished(self, exchange: Exchange) -> None:
        self.finished.append((exchange.status, exchange.failure))

    def request_undelivered(self, exchange: Exchange) -> None:
        exchange.forward(self.upstream)

    def malformed_request(self, status: int) -> None:
        self.malformed.append(status)

    def h2c_connection(self, tunnel: H2cTunnel) -> None:
        tunnel.close()

    def stream_opened(self, stream: H2Stream) -> None:
        return None

    def stream_closed(self, stream: H2Stream) -> None:
        return None


@asynccontextmanager
async def relay_server(handler: Forwarding) -> AsyncIterator[tuple[RelayServer, int]]:
    """A RelayServer with `handler` listening on a free loopback port: (relay, port)."""
    relay = RelayServer(handler)
    server = await asyncio.get_running_loop().create_server(relay.protocol, "127.0.0.1", 0)
    try:
        yield relay, server.sockets[0].getsockname()[1]
    finally:
        relay.close_all()
        server.close()
        await server.wait_closed()


class _LoopbackServer:
    """A server on a free loopback port whose connections get `protocol()`."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None

    def protocol(self) -> asyncio.Protocol:
        raise NotImplementedError

    async def start(self) -> Address:
        self._server = await asyncio.get_running_loop().create_server(self.protocol, "127.0.0.1", 0)
        return ("127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _Echo(asyncio.Protocol):
    def __init__(self, upstream: EchoUpstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.upstream.requests.append(self.url)
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s\n" % (len(self.url) + 1, self.url))


class EchoUpstream(_LoopbackServer):
    """Answers every complete request with 200 and its target (and a newline) as the body; `requests` lists
    the targets."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[bytes] = []

    def protocol(self) -> asyncio.Protocol:
        return _Echo(self)


class _Recording(asyncio.Protocol):
    def __init__(self, upstream: ScriptedUpstream) -> None:
        self.upstream = upstream
        self.received = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.upstream.connections.append(self)

    def data_received(self, data: bytes) -> None:
        self.received += data


class ScriptedUpstream(_LoopbackServer):
    """Records every byte each connection brings; the test writes the answers (`connections[i].transport`)."""

    def __init__(self) -> None:
        super().__init__()
        self.connections: list[_Recording] = []

    def protocol(self) -> asyncio.Protocol:
        return _Recording(self)

    async def stop(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()
        await super().stop()


async def until(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for `condition()` to hold (polled), failing after `timeout_s`: a bound, not a measurement."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
