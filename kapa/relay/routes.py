"""A small HTTP/1.1 server for a proxy's own GET endpoints (metrics, readiness, liveness).

Each route is a function called per request that returns (status, content type, body), or a coroutine
function whose result is that (for an answer that waits, like the queue-proxy's wait-for-drain); the query
string is ignored. Keep-alive is kept, since Prometheus scrapes over one connection.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping

import httptools

from kapa.relay.http1 import status_phrase

Answer = tuple[int, str, bytes]
#: Returns (status, content type, body) for one request, or an awaitable of it.
Route = Callable[[], Answer | Awaitable[Answer]]


class _RoutesProtocol(asyncio.Protocol):
    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._routes = routes
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send(400, "text/plain", b"upgrade not supported\n", keep_alive=False)
        except httptools.HttpParserError:
            self._send(400, "text/plain", b"malformed HTTP request\n", keep_alive=False)

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        keep_alive = self._parser.should_keep_alive()
        if method not in (b"GET", b"HEAD"):
            self._send(405, "text/plain", b"only GET\n", keep_alive)
            return
        path = httptools.parse_url(self._url).path.decode("latin-1")
        route = self._routes.get(path)
        if route is None:
            self._send(404, "text/plain", b"not found; try: %s\n" % " ".join(self._routes).encode(), keep_alive)
            return
        answer = route()
        if inspect.isawaitable(answer):
            asyncio.get_running_loop().create_task(self._send_later(answer, method, keep_alive))
            return
        self._answer(answer, method, keep_alive)

    async def _send_later(self, pending: Awaitable[Answer], method: bytes, keep_alive: bool) -> None:
        answer = await pending
        if not self.transport.is_closing():
            self._answer(answer, method, keep_alive)

    def _answer(self, answer: Answer, method: bytes, keep_alive: bool) -> None:
        status, content_type, body = answer
        self._send(status, content_type, b"" if method == b"HEAD" else body, keep_alive, len(body))

    def _send(self, status: int, content_type: str, body: bytes, keep_alive: bool, length: int | None = None) -> None:
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n" % (
            status, status_phrase(status), content_type.encode(), len(body) if length is None else length,
            b"keep-alive" if keep_alive else b"close",
        )
        self.transport.write(head + body)
        if not keep_alive:
            self.transport.close()


async def serve_routes(host: str, port: int, routes: Mapping[str, Route]) -> asyncio.Server:
    """Listen on host:port and answer GET (and HEAD) on `routes`; 404 elsewhere."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _RoutesProtocol(routes), host, port, reuse_address=True)
