"""Keep-alive connections to upstream servers, one idle list per (host, port), and the response side of a
relayed HTTP/1.1 exchange.

An `UpstreamConnection` parses responses only to find where each one ends (status, keep-alive, upgrade);
the bytes themselves go to the client unchanged, in the chunks the upstream sent them, so no response is
re-encoded or held whole.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from kapa.relay.http1 import Exchange

#: (host, port) of an upstream server; the pool's key.
Address = tuple[str, int]


class _TunnelAccepted(Exception):
    """Raised from the response parser's callback at a 2xx answer to CONNECT, to stop it there: the bytes
    after that head are the tunnel's (RFC 9110 9.3.6: such a response has no body, whatever it says)."""


#: Response bytes kept at most for an Upgrade request while its 101 has not come: an app's response head is
#: as bounded as a client's (kapa.relay.http1.MAX_HEAD_BYTES); past this, nothing in it names h2c.
MAX_UPGRADE_HEAD_BYTES = 64 * 1024


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream; bound to at most one `Exchange` at a time."""

    __slots__ = (
        "pool", "address", "transport", "exchange", "parser", "closed", "reused", "keep_alive",
        "_status", "_complete", "_head_request", "_upgrade_head", "write_paused", "read_paused", "idle_sweeps",
    )

    def __init__(self, pool: UpstreamPool, address: Address) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.exchange: Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        #: True once it has carried a response: a failure before any response byte may then be a stale
        #: keep-alive connection, which is worth one retry on a fresh one.
        self.reused = False
        self.keep_alive = False
        self.write_paused = False
        #: Set while the client side cannot take more response bytes (see Exchange.client_write_paused).
        self.read_paused = False
        self._status = 0
        self._complete = False
        self._head_request = False
        #: The response bytes read so far for an Upgrade request, until the 101 that names the protocol the
        #: app switched to (a head can arrive over several reads); empty for every other request.
        self._upgrade_head = b""
        #: Pool sweeps this connection has sat idle through (see UpstreamPool.sweep).
        self.idle_sweeps = 0

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection belong to no request: the connection is out of step, drop it.
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            head = self._upgrade_head + data[:upgrade.args[0]]
            exchange.write_response(data)
            exchange.upgrade_accepted(self, data[upgrade.args[0]:], head)
            return
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _TunnelAccepted):
                exchange.write_response(data)  # the head, and whatever tunnel bytes came with it
                exchange.upgrade_accepted(self, b"", b"")
            else:
                exchange.upstream_failed(self, "the app sent a malformed response")
            return
        if exchange.upgrade and len(self._upgrade_head) < MAX_UPGRADE_HEAD_BYTES:
            self._upgrade_head += data  # an interim 1xx or the 101 itself, split over reads
        # Parse first, write second, finish third: finishing may start the client's next request, whose
        # response must not overtake this one's last bytes.
        exchange.write_response(data)
        if self._complete:
            self._complete = False
            if self._head_request:
                # A response to HEAD announces a body it does not send; the parser cannot know that.
                self.parser = httptools.HttpResponseParser(self)
            self.reused = True
            exchange.response_complete(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is None:
            self.pool.forget(self)
        else:
            self.exchange = None
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.upstream_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.upstream_write_paused(False)

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._status = status
        self.keep_alive = self.parser.should_keep_alive()
        exchange = self.exchange
        if exchange is not None:
            exchange.status = status
            if status >= 200 and exchange.method == b"HEAD":
                self._head_request = True
                self._complete = True
            elif exchange.upgrade and 200 <= status < 300 and exchange.method == b"CONNECT":
                raise _TunnelAccepted

    def on_message_complete(self) -> None:
        # An interim 1xx response (100 Continue) is followed by the real one.
        if self._status >= 200:
            self._complete = True

    # --- used by Exchange ---------------------------------------------------------------------------

    def start(self, exchange: Exchange) -> None:
        """Bind to `exchange`; its response bytes now go to that exchange's client."""
        self.exchange = exchange
        self._status = 0
        self._head_request = False
        self._upgrade_head = b""


#: Idle upstream connections are closed after this long: before the upstream's own keep-alive timeout
#: (Kapa's queue-proxy: 75 s; aiohttp 75 s, Go 90 s, nginx 75 s) can close one just as it is reused.
DEFAULT_POOL_IDLE_S = 30.0


class UpstreamPool:
    """Idle keep-alive connections per upstream address, most recently used first.

    `take` is synchronous so the common case (an idle connection exists) costs a dict lookup and a pop;
    only a miss opens a connection, through `connect`. A connection idle for `idle_s` is closed by the
    relay's periodic `sweep` (give or take one sweep interval).
    """

    def __init__(self, max_idle_per_address: int = 1024, idle_s: float = DEFAULT_POOL_IDLE_S) -> None:
        self.max_idle_per_address = max_idle_per_address
        self.idle_s = idle_s
        self._idle: dict[Address, list[UpstreamConnection]] = {}
        self._last_sweep: float | None = None

    def take(self, address: Address) -> UpstreamConnection | None:
        """An idle, open connection to `address`, or None."""
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, address: Address) -> UpstreamConnection:
        """Open a new connection to `address` (raises OSError when the upstream refuses)."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: UpstreamConnection(self, address), address[0], address[1])
        return conn

    def put(self, conn: UpstreamConnection) -> None:
        """Return a connection whose last response is complete, for reuse."""
        if conn.closed:
            return
        if conn.write_paused:
            conn.transport.close()
            return
        if conn.read_paused:  # a paused reader would not notice the upstream closing it
            conn.read_paused = False
            conn.transport.resume_reading()
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) >= self.max_idle_per_address:
            conn.transport.close()
        else:
            conn.idle_sweeps = 0
            idle.append(conn)

    def sweep(self, now: float) -> None:
        """Close connections that have been idle for `idle_s`: a connection seen idle by every sweep
        over that span (counted in sweeps, so `put` costs no clock read)."""
        last, self._last_sweep = self._last_sweep, now
        if last is None:
            return
        sweeps_needed = max(1, round(self.idle_s / max(now - last, 1e-3)))
        for idle in self._idle.values():
            stale = 0
            for conn in idle:  # oldest first
                conn.idle_sweeps += 1
                if conn.idle_sweeps > sweeps_needed:
                    stale += 1
            if stale:
                for conn in idle[:stale]:
                    conn.transport.close()
                del idle[:stale]

    def forget(self, conn: UpstreamConnection) -> None:
        """Drop an idle connection the upstream closed."""
        idle = self._idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    def discard(self, address: Address) -> None:
        """Close the idle connections to `address` (an upstream found gone: each would fail once)."""
        for conn in self._idle.pop(address, ()):
            conn.transport.close()

    def close(self) -> None:
        """Close every idle connection (at shutdown)."""
        for idle in self._idle.values():
            for conn in idle:
                conn.transport.close()
            idle.clear()
