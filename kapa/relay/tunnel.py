"""A byte pipe between two connected transports: what an HTTP connection becomes after `101 Switching
Protocols` (WebSocket) and what carries h2c.

Each direction copies bytes as they arrive; when one side's write buffer fills, the other side stops
reading until it drains, so neither direction buffers without bound. An end-of-stream from one side is
passed on as a half-close; the pipe is finished when both transports are closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: Called with every chunk one end receives; returns what to forward (the h2c relay reads frame headers
#: and changes a few frames).
Filter = Callable[[bytes], bytes]


class PipeEnd(asyncio.Protocol):
    """The protocol of one transport of a `Pipe`."""

    __slots__ = ("pipe", "transport", "peer", "filter", "eof", "closed")

    def __init__(self, pipe: Pipe, transport: asyncio.Transport, filter: Filter | None) -> None:
        self.pipe = pipe
        self.transport = transport
        self.peer: PipeEnd = None  # type: ignore[assignment]  # set by Pipe
        self.filter = filter
        self.eof = False
        self.closed = False

    def data_received(self, data: bytes) -> None:
        if self.filter is not None:
            data = self.filter(data)
            if not data:
                return
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer.eof or not self.pipe.half_close or not peer.transport.can_write_eof():
            self.pipe.close()
            return False
        peer.transport.write_eof()
        return True  # keep our side open for the peer's remaining bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pipe.end_lost()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()


class Pipe:
    """Relays bytes both ways between `client` and `upstream` until either closes.

    `on_closed` runs once, after both transports are closed. With `half_close` (a WebSocket or a CONNECT
    tunnel, byte streams) an end's EOF is passed on and the other direction lives on; without it (HTTP/2,
    where a connection one peer has closed carries nothing more, and the streams it had are over) an EOF
    from either end closes both.
    """

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        on_closed: Callable[[], None],
        filter_client: Filter | None = None,
        filter_upstream: Filter | None = None,
        half_close: bool = True,
    ) -> None:
        self.half_close = half_close
        self.client_end = PipeEnd(self, client, filter_client)
        self.upstream_end = PipeEnd(self, upstream, filter_upstream)
        self.client_end.peer = self.upstream_end
        self.upstream_end.peer = self.client_end
        self._on_closed: Callable[[], None] | None = on_closed

    #: A pipe carries one long request (a WebSocket): never idle.
    idle = False

    def start(self, to_upstream: bytes = b"", to_client: bytes = b"") -> None:
        """Take over both transports (neither may have reported connection_lost yet) and relay, starting
        with the bytes each side sent before the pipe existed."""
        client, upstream = self.client_end.transport, self.upstream_end.transport
        client.set_protocol(self.client_end)
        upstream.set_protocol(self.upstream_end)
        if client.is_closing() or upstream.is_closing():
            self.close()  # connection_lost now reaches our ends, which finish the pipe
            return
        if to_upstream:
            self.client_end.data_received(to_upstream)
        if to_client:
            self.upstream_end.data_received(to_client)
        client.resume_reading()
        upstream.resume_reading()

    def close(self) -> None:
        """Close both sides (pending writes are flushed first)."""
        self.client_end.transport.close()
        self.upstream_end.transport.close()

    def end_lost(self) -> None:
        if not (self.client_end.closed and self.upstream_end.closed):
            self.close()
            return
        on_closed, self._on_closed = self._on_closed, None
        if on_closed is not None:
            on_closed()
