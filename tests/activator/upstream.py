"""A tiny upstream for the activator's tests: answers the queue-proxy probe, serves, counts, can die.

It stands in for a queue-proxy + app pair where the test must steer readiness exactly or observe what
arrived (per-request ids, the proxy header, the highest concurrency it saw).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter

from aiohttp import web

from kapa.core import contract
from kapa.core.services import Endpoint

from tests.support import free_port, serve_app


class Upstream:
    def __init__(self, ready: bool = True) -> None:
        self.port = free_port()
        self.endpoint = Endpoint("127.0.0.1", self.port)
        self.ready = ready
        self.in_flight = 0
        self.max_in_flight = 0
        self.served: Counter[str] = Counter()
        self.proxied = 0
        self.probes = 0
        #: Monotonic time (loop clock) when readiness was switched on.
        self.ready_at: float | None = None
        self._runner: web.AppRunner | None = None

    def make_ready(self) -> None:
        self.ready = True
        self.ready_at = asyncio.get_running_loop().time()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get(contract.PROBE_HEADER) == contract.PROBE_HEADER_VALUE:
            self.probes += 1
            return web.Response(status=200 if self.ready else 503, text="probe\n")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._echo(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if request.headers.get(contract.PROXY_HEADER) == contract.PROXY_HEADER_VALUE:
                self.proxied += 1
            body = await request.read()
            sleep_ms = int(request.query.get("sleep", "0"))
            if sleep_ms:
                await asyncio.sleep(sleep_ms / 1000)
            if "die" in request.query:
                assert request.transport is not None
                request.transport.abort()  # the pod fails mid-request
                raise ConnectionResetError("died on purpose")
            request_id = request.query.get("id", "")
            self.served[request_id] += 1
            return web.Response(text=f"id={request_id} port={self.port} body={len(body)}\n")
        finally:
            self.in_flight -= 1

    async def _echo(self, request: web.Request) -> web.WebSocketResponse:
        """A WebSocket that echoes each text message with this upstream's port."""
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_str(f"{message.data} from {self.port}")
        return socket

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = await serve_app(app, self.port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class DyingUpstream:
    """A pod that dies on command the way a killed pod looks to a connection pool that has not noticed yet:
    new connections are refused, and a request on a kept-alive connection gets a reset, no response.

    Until then it answers every request (the probe included) with 200 and keeps connections alive.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = Endpoint("127.0.0.1", self.port)
        self.served = 0
        self.reset = 0
        self.dead = False
        self._server: asyncio.Server | None = None

    async def start(self) -> DyingUpstream:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _DyingConnection(self), "127.0.0.1", self.port
        )
        return self

    def die(self) -> None:
        self.dead = True
        assert self._server is not None
        self._server.close()  # refuses new connections; open ones stay until they are used

    def vanish(self) -> None:
        """Die, and answer new connections with nothing at all, as a pod on a lost node does: its port
        is taken by a listener whose accept queue is full, so the kernel drops further SYNs."""
        self.die()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(0)
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            fillers.append(filler)
        self._blackhole = [listener, *fillers]

    def close(self) -> None:
        for sock in getattr(self, "_blackhole", []):
            sock.close()


class _DyingConnection(asyncio.Protocol):
    _RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"

    def __init__(self, upstream: DyingUpstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.upstream.dead:
            self.upstream.reset += 1
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()  # RST: what the peer of a killed process sees
            return
        self.received += data
        while b"\r\n\r\n" in self.received:  # body-less requests only
            _, self.received = self.received.split(b"\r\n\r\n", 1)
            self.upstream.served += 1
            self.transport.write(self._RESPONSE)
