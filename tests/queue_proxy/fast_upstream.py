"""A minimal, fast HTTP/1.1 responder (uvloop + httptools): the app for load tests and for measuring the
proxy's own CPU cost (an app this cheap leaves the proxy as the bottleneck).

`python -m tests.queue_proxy.fast_upstream PORT` answers every request with 200 and a 13-byte body.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world\n"


class _Responder(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self._transport.write(_RESPONSE)  # type: ignore[union-attr]


async def _serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Responder, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1])))
