"""A tiny upstream for the activator's tests: answers the queue-proxy probe, serves, counts, can die.

It stands in for a queue-proxy + app pair where the test must steer readiness exactly or observe what
arrived (per-request ids, the proxy header, the highest concurrency it saw).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp import web

from kapa import contract
from kapa.services import Endpoint

from tests.support import free_port


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
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
