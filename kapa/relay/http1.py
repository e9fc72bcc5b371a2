"""The HTTP/1.1 side of the relay: a server protocol that parses client requests with httptools and relays
each one to an upstream chosen by a `Handler`, streaming bodies both ways.

Requests: the head is rebuilt from the parsed pieces (httptools normalises whitespace, nothing else
changes: every header, `Forwarded`, `X-Forwarded-*`, `traceparent` included, passes in its order and
case), the body goes on chunk by chunk as it arrives (re-framed when chunked). Responses: bytes pass to
the client unchanged; the upstream side parses them only to learn where each ends.

Requests on one connection are served in order (pipelining works, without overlap). A connection that
opens with the HTTP/2 preface is handed to `kapa.relay.h2c`; a request with `Upgrade` becomes a byte pipe
(`kapa.relay.tunnel`) when the upstream answers 101.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from typing import Protocol

import httptools

from kapa import contract
from kapa.log import get_logger
from kapa.relay.h2c import PREFACE, H2cRelay, H2cTunnel, H2Stream, stream_status
from kapa.relay.pool import Address, UpstreamConnection, UpstreamPool
from kapa.relay.tunnel import Pipe

log = get_logger(__name__)

#: Largest request head accepted (request line and headers); more gets 431.
MAX_HEAD_BYTES = 64 * 1024
#: Request body held per exchange while it has no upstream yet (queued, connecting) before the client
#: stops being read.
MAX_PENDING_BYTES = 256 * 1024

#: Values of `Exchange.failure`: why the relay ended an exchange itself.
FAILURE_UPSTREAM = contract.REASON_UPSTREAM_ERROR
FAILURE_CLIENT_GONE = "client_gone"

# Reasons the client connection is not being read (a bit mask, reading resumes when all are gone).
_PAUSED_PENDING = 1
_PAUSED_UPSTREAM = 2
_PAUSED_HELD = 4  # Exchange.hold_body

_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
#: Methods a request may be sent again with (RFC 9110 9.2.2).
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
_IDEMPOTENCY_KEY = b"\r\nidempotency-key:"


class Handler(Protocol):
    """What a proxy built on the relay decides. Every method is called on the event loop and must not block.

    For each exchange `request_received` is called once its head is parsed; the handler then calls, now
    or later, `exchange.forward(address)` or `exchange.respond(...)`. `request_finished` follows exactly
    once, however the exchange ends (response complete, client gone, upstream gone, aborted), also for
    exchanges the handler answered itself.
    """

    def request_received(self, exchange: Exchange) -> None: ...

    def request_finished(self, exchange: Exchange) -> None: ...

    def request_undelivered(self, exchange: Exchange) -> None:
        """The connection the request went on had served a response before, and closed before any byte of
        this one's (an idle keep-alive connection the upstream closed just as it was reused, or an
        upstream that died), and `exchange.replayable()`. Send it again (`forward`, `forward_on`: a fresh
        connection or another upstream) or `respond`."""

    def malformed_request(self, status: int) -> None:
        """A request was refused before it became an exchange (400 malformed, 408 head not received in
        time, 431 head too large)."""

    def h2c_connection(self, tunnel: H2cTunnel) -> None:
        """A connection opened with the HTTP/2 preface: call `tunnel.forward(address)` or `tunnel.close()`."""

    def stream_opened(self, stream: H2Stream) -> None: ...

    def stream_closed(self, stream: H2Stream) -> None: ...


@cache
def status_phrase(status: int) -> bytes:
    """The reason phrase of an HTTP status (b"Unknown" for codes HTTP does not name)."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def local_response(
    status: int, body: bytes, keep_alive: bool, head_only: bool = False, extra_headers: bytes = b""
) -> bytes:
    """A complete plain-text response the relay sends itself; `extra_headers` are CRLF-terminated lines."""
    return (
        b"HTTP/1.1 %d %s\r\n%sContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
    ) % (
        status, status_phrase(status), extra_headers, len(body), b"keep-alive" if keep_alive else b"close",
        b"" if head_only else body,
    )


@dataclass(frozen=True)
class ClientTimeouts:
    """How long an HTTP/1 client connection may take over a request head, and stay idle between requests.

    Without them a client that trickles a head (slowloris) or never sends one holds its connection, and
    what the relay keeps for it, forever. A head that is not complete `header_read_s` after the
    connection opened (first request) or after its own first byte (later ones) gets 408 and the close;
    a connection that sent nothing at all is just closed, as is a keep-alive connection idle for
    `idle_s` between requests. Checked by one sweep over the connections (every `sweep_interval_s`), so
    a timeout fires up to one interval late and costs the request path nothing.
    Not covered: upgraded connections (WebSocket, h2c), which live as long as both ends want.
    """

    header_read_s: float = float(contract.DEFAULT_HEADER_READ_TIMEOUT_SECONDS)
    idle_s: float = float(contract.DEFAULT_IDLE_TIMEOUT_SECONDS)

    def __post_init__(self) -> None:
        if not (self.header_read_s > 0 and self.idle_s > 0):
            raise ValueError(f"timeouts must be positive: {self}")

    @property
    def sweep_interval_s(self) -> float:
        return min(1.0, max(0.01, min(self.header_read_s, self.idle_s) / 4))


class RelayServer:
    """Shared state of one listening relay: the handler, the upstream pool, the open client connections.

    Use `protocol` as the factory of `loop.create_server`; the first connection starts the sweep that
    enforces `timeouts` (and closes upstream connections idle in the pool too long); `close_all` ends it.
    """

    def __init__(
        self, handler: Handler, pool: UpstreamPool | None = None, timeouts: ClientTimeouts = ClientTimeouts()
    ) -> None:
        self.handler = handler
        self.pool = pool or UpstreamPool()
        self.timeouts = timeouts
        #: Open client connections: ServerProtocol, Pipe (upgraded) or H2cRelay; each has `idle` and `close()`.
        self.connections: set[ServerProtocol | Pipe | H2cRelay] = set()
        #: Set at shutdown: connections close after their current response.
        self.closing = False
        self._sweeper: asyncio.Task[None] | None = None

    def protocol(self) -> ServerProtocol:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        return ServerProtocol(self)

    async def _sweep_forever(self) -> None:
        interval = self.timeouts.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Expire client connections past their header-read or idle timeout, and stale pooled upstream ones."""
        timeouts = self.timeouts
        for connection in list(self.connections):
            if isinstance(connection, ServerProtocol):
                connection.expire(now, timeouts)
        self.pool.sweep(now)

    def connection_closed(self, connection: ServerProtocol | Pipe | H2cRelay) -> None:
        self.connections.discard(connection)

    def close_idle(self) -> None:
        """Stop taking new requests: close idle connections now, busy ones after their response."""
        self.closing = True
        for connection in list(self.connections):
            if connection.idle:
                connection.close()

    def close_all(self) -> None:
        """Close every connection, busy or not, and the idle upstream connections; stop the sweep."""
        self.closing = True
        for connection in list(self.connections):
            connection.close()
        self.pool.close()
        if self._sweeper is not None:
            self._sweeper.cancel()


class Exchange:
    """One request and its response, from the parsed head to the last response byte.

    Attributes a handler reads: `method`, `url`, `head` (the request head as sent upstream), `head_lower`
    (the same, lower-cased, for cheap header tests like `b"\\r\\nx-name: value\\r\\n" in head_lower`),
    `started_at` (time.monotonic() when the head was parsed), `status` (of the response the client got,
    0 before one started), `response_started`, `upgraded`, `failure` (FAILURE_* or a handler's own reason),
    `done`. `tag` and `slot_held` are free for the handler.
    """

    __slots__ = (
        "server", "method", "url", "head", "head_lower", "keep_alive", "upgrade", "chunked", "started_at",
        "status", "response_started", "done", "request_complete", "upgraded", "failure", "upstream",
        "address", "pending", "pending_bytes", "body_sent", "tag", "slot_held",
    )

    def __init__(
        self, server: ServerProtocol, method: bytes, url: bytes, head: bytes, head_lower: bytes,
        keep_alive: bool, upgrade: bool, started_at: float,
    ) -> None:
        self.server = server
        self.method = method
        self.url = url
        self.head = head
        self.head_lower = head_lower
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.chunked = b"\r\ntransfer-encoding:" in head_lower
        self.started_at = started_at
        self.status = 0
        self.response_started = False
        self.done = False
        self.request_complete = False
        self.upgraded = False
        self.failure: str | None = None
        self.upstream: UpstreamConnection | None = None
        self.address: Address | None = None
        self.pending: list[bytes] | None = None
        self.pending_bytes = 0
        self.body_sent = False
        self.tag: object = None
        self.slot_held = False

    # --- for the handler ---------------------------------------------------------------------------

    def forward(self, address: Address) -> None:
        """Send the request to `address` on a pooled connection (a new one if none is idle)."""
        if self.done:
            return
        self.address = address
        conn = self.server.relay.pool.take(address)
        if conn is not None:
            self._attach(conn)
        else:
            asyncio.get_running_loop().create_task(self._connect(address))

    def forward_on(self, conn: UpstreamConnection) -> None:
        """Send the request on `conn`, an idle connection the handler opened (`pool.connect`) or took
        (`pool.take`) itself; it returns to the pool afterwards as if `forward` had used it."""
        if self.done:
            self.server.relay.pool.put(conn)
            return
        self.address = conn.address
        self._attach(conn)

    def hold_body(self) -> None:
        """Read none of the request body until the exchange is forwarded (or ends).

        For a request that waits a long time for an upstream: it then costs its head, not the relay's
        per-exchange body buffer. The client connection is not read meanwhile, so a client that gives up
        is noticed only when the exchange is forwarded or answered.
        """
        if not self.request_complete and self.upstream is None and not self.done:
            self.server.pause(_PAUSED_HELD)

    def set_request_header(self, name: bytes, value: bytes) -> None:
        """Add `name: value` to the request head, replacing every header of that name (compared
        case-insensitively). Only before the exchange is forwarded: the head is sent as it is then."""
        if self.upstream is not None or self.body_sent:
            raise RuntimeError("set_request_header after the request head was sent upstream")
        head, head_lower = self.head, self.head_lower
        marker = b"\r\n" + name.lower() + b":"
        start = head_lower.find(marker)
        while start >= 0:
            end = head_lower.index(b"\r\n", start + 2)  # the line ends before the head's final CRLF
            head, head_lower = head[:start] + head[end:], head_lower[:start] + head_lower[end:]
            start = head_lower.find(marker, start)
        line = name + b": " + value + b"\r\n"
        self.head = head[:-2] + line + b"\r\n"
        self.head_lower = head_lower[:-2] + line.lower() + b"\r\n"

    def respond(self, status: int, body: bytes, close: bool = False, extra_headers: bytes = b"") -> None:
        """Answer the client from the relay (a plain-text body; `extra_headers`: CRLF-terminated lines) and
        end the exchange."""
        if self.done:
            return
        self._drop_upstream()
        if self.response_started:  # too late for another response: cut the one under way
            self.abort()
            return
        keep = (
            self.keep_alive and not close and not self.upgrade
            # A client waiting for 100 Continue may or may not send its body now: only closing is safe.
            and (self.request_complete or b"\r\nexpect:" not in self.head_lower)
        )
        self.status = status
        self.response_started = True
        if not self.server.closed:
            self.server.transport.write(
                local_response(status, body, keep, head_only=self.method == b"HEAD", extra_headers=extra_headers)
            )
        self._finish(keep)

    def replayable(self) -> bool:
        """Whether sending the request again cannot do harm that sending it once would not: its method is
        idempotent (RFC 9110 9.2.2) or it carries Idempotency-Key, and none of its body (or, after an
        upgrade request, of the client's bytes) has gone upstream, so nothing consumed is lost. What
        browsers and Go's transport require before retrying on a new connection."""
        return not self.body_sent and not self.response_started and (
            self.method in _IDEMPOTENT or _IDEMPOTENCY_KEY in self.head_lower
        )

    def abort(self) -> None:
        """End the exchange by closing the client connection (and the upstream one)."""
        if self.done:
            return
        self._drop_upstream()
        self.server.transport.close()
        self._finish(False)

    # --- request side (called by ServerProtocol) ---------------------------------------------------------

    def send_body(self, body: bytes) -> None:
        if self.done:
            return
        if self.chunked:
            self._send((b"%x\r\n" % len(body), body, b"\r\n"))
        else:
            self._send((body,))

    def request_done(self) -> None:
        self.request_complete = True
        if self.chunked and not self.done:
            self._send((b"0\r\n\r\n",))

    def send_raw(self, data: bytes) -> None:
        """Client bytes after an upgrade request, relayed as they are."""
        if not self.done:
            self._send((data,))

    def client_lost(self) -> None:
        if self.done:
            return
        self.failure = FAILURE_CLIENT_GONE
        if not self.response_started:
            self.status = 499  # nginx's "client closed request": the client got nothing
        self._drop_upstream()
        self._finish(False)

    def _send(self, parts: tuple[bytes, ...]) -> None:
        conn = self.upstream
        if conn is not None:
            conn.transport.writelines(parts)
            self.body_sent = True
            return
        if self.pending is None:
            self.pending = []
        self.pending.extend(parts)
        self.pending_bytes += sum(map(len, parts))
        if self.pending_bytes > MAX_PENDING_BYTES:
            self.server.pause(_PAUSED_PENDING)

    # --- upstream side ----------------------------------------------------------------------------------

    async def _connect(self, address: Address) -> None:
        pool = self.server.relay.pool
        try:
            conn = await pool.connect(address)
        except OSError as error:
            if not self.done:
                self.failure = FAILURE_UPSTREAM
                reason = error.strerror or str(error)
                self.respond(502, b"kapa: could not connect to the app at %s:%d: %s\n" % (
                    address[0].encode(), address[1], reason.encode()))
            return
        self.forward_on(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.start(self)
        transport = conn.transport
        pending = self.pending
        if pending:
            self.pending = None
            self.pending_bytes = 0
            transport.writelines([self.head, *pending])
            self.body_sent = True
            self.server.resume(_PAUSED_PENDING | _PAUSED_HELD)
        else:
            transport.write(self.head)
            if self.server.paused:
                self.server.resume(_PAUSED_HELD)
        if self.server.write_paused:
            conn.read_paused = True
            transport.pause_reading()

    def _detach(self, conn: UpstreamConnection) -> None:
        self.upstream = None
        conn.exchange = None
        self.server.resume(_PAUSED_UPSTREAM)

    def _drop_upstream(self) -> None:
        conn = self.upstream
        if conn is not None:
            self._detach(conn)
            conn.transport.close()

    def write_response(self, data: bytes) -> None:
        self.response_started = True
        self.server.transport.write(data)

    def response_complete(self, conn: UpstreamConnection) -> None:
        self._detach(conn)
        if conn.keep_alive and self.request_complete and not self.upgrade:
            self.server.relay.pool.put(conn)
        else:
            conn.transport.close()
        # An upgrade the upstream declined leaves our request parser in upgrade mode: close.
        self._finish(conn.keep_alive and self.keep_alive and not self.upgrade)

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.server.pause(_PAUSED_UPSTREAM)
        else:
            self.server.resume(_PAUSED_UPSTREAM)

    def upstream_failed(self, conn: UpstreamConnection, why: str) -> None:
        """The upstream broke the protocol: close it, and answer 502 if the client has nothing yet."""
        self.failure = FAILURE_UPSTREAM
        self._drop_upstream()
        if self.response_started:
            self.abort()
        else:
            self.respond(502, f"kapa: {why}\n".encode())

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        """The upstream connection closed while this exchange used it."""
        self.upstream = None
        self.server.resume(_PAUSED_UPSTREAM)
        if self.done:
            return
        if self.response_started:
            # A response delimited by the close, or one cut short: either way the client's connection
            # must end too, the only way to tell the client where the body ends.
            self.server.transport.close()
            self._finish(False)
        elif conn.reused and self.replayable():
            # Most likely an idle keep-alive connection the upstream closed as we reused it (or an upstream
            # that died): the handler sends the request again, here or elsewhere.
            self.server.handler.request_undelivered(self)
        else:
            self.failure = FAILURE_UPSTREAM
            self.respond(502, b"kapa: the app closed the connection before responding\n")

    def upgrade_accepted(self, conn: UpstreamConnection, after_head: bytes) -> None:
        """The upstream answered 101: from now on both connections are a byte pipe (or an h2c relay)."""
        self._detach(conn)
        self.upgraded = True
        server = self.server
        if server.closed:
            conn.transport.close()
            self._finish(False)
            return
        server.hand_over()
        relay = server.relay
        if b"\r\nupgrade: h2c" in self.head_lower:
            h2c = H2cRelay(relay, server.transport, upgraded=self)
            relay.connections.add(h2c)
            h2c.start(conn.transport, upstream_sent=after_head)
        else:
            pipe = Pipe(server.transport, conn.transport, lambda: self._pipe_closed(pipe))
            relay.connections.add(pipe)
            pipe.start()

    def _pipe_closed(self, pipe: Pipe) -> None:
        self.server.relay.connection_closed(pipe)
        self._finish(False)

    def h2c_stream_finished(self, stream: H2Stream) -> None:
        """Stream 1 of a connection upgraded to h2c (this request's response) ended."""
        self.status = stream_status(stream)
        self._finish(False)

    def _finish(self, keep_client: bool) -> None:
        if self.done:
            return
        self.done = True
        self.pending = None
        server = self.server
        server.handler.request_finished(self)
        server.exchange_finished(self, keep_client)


class ServerProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "relay", "handler", "transport", "closed", "handed_over", "write_paused", "paused",
        "_parser", "_url", "_headers", "_parsing", "_active", "_waiting", "_fresh", "_prefix",
        "_head_started", "_head_bytes", "_too_large", "_upgrading", "_heads", "_mark", "_marked_at",
    )

    def __init__(self, relay: RelayServer) -> None:
        self.relay = relay
        self.handler = relay.handler
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.closed = False
        #: The transport now belongs to a pipe or an h2c relay.
        self.handed_over = False
        self.write_paused = False
        self.paused = 0
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[bytes] = []
        self._parsing: Exchange | None = None  # the exchange whose request the parser is reading
        self._active: Exchange | None = None  # the exchange being served
        self._waiting: deque[Exchange] | None = None  # pipelined exchanges after the active one
        self._fresh = True  # nothing parsed yet: the connection may still turn out to be h2c
        self._prefix = b""
        self._head_started = False
        self._head_bytes = 0
        self._too_large = False
        self._upgrading: Exchange | None = None
        #: Request heads completed on this connection, and the sweep's record of the state it last saw
        #: (heads, waiting for a head?) and since when (see `expire`).
        self._heads = 0
        self._mark: tuple[int, bool] | None = None
        self._marked_at = 0.0

    @property
    def idle(self) -> bool:
        return self._active is None

    def expire(self, now: float, timeouts: ClientTimeouts) -> None:
        """Called by the sweep: end the connection if it has waited too long for a head, or idled too long.

        The state is (heads completed, waiting for a head); while it stays the same from one sweep to the
        next, the connection is doing nothing the timeouts allow for. A connection serving a request is
        never expired here (the handler's own timeouts apply).
        """
        if self._active is not None or self.closed:
            self._mark = None
            return
        partial = self._head_started or bool(self._prefix)
        waiting_for_head = partial or self._heads == 0
        state = (self._heads, waiting_for_head)
        if state != self._mark:
            self._mark, self._marked_at = state, now
            return
        if now - self._marked_at < (timeouts.header_read_s if waiting_for_head else timeouts.idle_s):
            return
        if partial:
            self.handler.malformed_request(408)
            self.transport.write(local_response(
                408, b"kapa: request head not complete within %g s\n" % timeouts.header_read_s, keep_alive=False
            ))
        self.transport.close()

    def close(self) -> None:
        if not self.closed:
            self.transport.close()

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.relay.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.relay.connections.discard(self)
        self._waiting = None  # pipelined requests not yet handed to the handler are simply dropped
        active = self._active
        if active is not None:
            active.client_lost()

    def data_received(self, data: bytes) -> None:
        if self._fresh:
            data = self._sniff(data)
            if not data:
                return
        upgrading = self._upgrading
        if upgrading is not None:
            upgrading.send_raw(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_requested(data[upgrade.args[0]:])
        except httptools.HttpParserCallbackError as error:
            log.error("relay bug while handling a request", error=repr(error.__context__))
            self._reject(500, b"kapa: internal error\n")
            return
        except httptools.HttpParserError as error:
            self._reject(400, b"kapa: malformed HTTP request: %s\n" % str(error).encode())
            return
        if self._too_large:
            self._reject(431, b"kapa: request head larger than %d bytes\n" % MAX_HEAD_BYTES)
        elif self._head_started:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._reject(431, b"kapa: request head larger than %d bytes\n" % MAX_HEAD_BYTES)

    def pause_writing(self) -> None:
        self.write_paused = True
        active = self._active
        if active is not None and active.upstream is not None:
            active.upstream.read_paused = True
            active.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        active = self._active
        if active is not None and active.upstream is not None and active.upstream.read_paused:
            active.upstream.read_paused = False
            active.upstream.transport.resume_reading()

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers.clear()
        self._head_started = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append(name + b": " + value)

    def on_headers_complete(self) -> None:
        self._head_started = False
        self._heads += 1
        parser = self._parser
        method = parser.get_method()
        version = parser.get_http_version()
        version_bytes = _VERSIONS.get(version) or version.encode()
        if self._headers:
            head = b"%s %s HTTP/%s\r\n%s\r\n\r\n" % (method, self._url, version_bytes, b"\r\n".join(self._headers))
        else:
            head = b"%s %s HTTP/%s\r\n\r\n" % (method, self._url, version_bytes)
        if len(head) > MAX_HEAD_BYTES:
            self._too_large = True
            self._parsing = None
            return
        exchange = Exchange(
            self, method, self._url, head, head.lower(), parser.should_keep_alive(), parser.should_upgrade(),
            time.monotonic(),
        )
        self._parsing = exchange
        if self._active is None:
            self._active = exchange
            self.handler.request_received(exchange)
        else:
            if self._waiting is None:
                self._waiting = deque()
            self._waiting.append(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is not None:
            exchange.send_body(body)

    def on_message_complete(self) -> None:
        exchange = self._parsing
        if exchange is not None:
            self._parsing = None
            exchange.request_done()

    # --- used by Exchange -------------------------------------------------------------------------

    def pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def exchange_finished(self, exchange: Exchange, keep: bool) -> None:
        if self.handed_over:
            return
        if self._active is exchange:
            self._active = None
        if self.paused:
            self.resume(self.paused)
        if not keep or self.closed or self.relay.closing:
            self._waiting = None
            if not self.closed:
                self.transport.close()  # after what was written
            return
        waiting = self._waiting
        if waiting:
            following = waiting.popleft()
            self._active = following
            self.handler.request_received(following)

    def hand_over(self) -> None:
        """The transport now belongs to a pipe or h2c relay: stop parsing and tracking it here."""
        self.handed_over = True
        self.relay.connections.discard(self)
        self._active = None
        self._upgrading = None
        self.paused = 0

    # --- internals --------------------------------------------------------------------------------

    def _sniff(self, data: bytes) -> bytes:
        """Before the first request: pass HTTP/1 bytes through, hand an h2c connection over."""
        received = self._prefix + data if self._prefix else data
        if len(received) < len(PREFACE) and PREFACE.startswith(received):
            self._prefix = received  # could still become the preface
            return b""
        self._fresh = False
        self._prefix = b""
        if not received.startswith(PREFACE):
            return received
        self.handed_over = True
        self.relay.connections.discard(self)
        tunnel = H2cTunnel(self.relay, self.transport, received)
        self.relay.connections.add(tunnel.relay)
        self.handler.h2c_connection(tunnel)
        return b""

    def _upgrade_requested(self, after_head: bytes) -> None:
        exchange = self._waiting[-1] if self._waiting else self._active
        if exchange is None or exchange.done:
            return  # refused already (and the connection is closing)
        self._upgrading = exchange
        if after_head:
            exchange.send_raw(after_head)

    def _reject(self, status: int, body: bytes) -> None:
        """Refuse input the parser cannot take; the connection closes after the answer."""
        self.handler.malformed_request(status)
        active = self._active
        if active is not None and not active.done:
            active.abort()  # the error is inside a request already under way: the client sees a close
            return
        self.transport.write(local_response(status, body, keep_alive=False))
        self.transport.close()
