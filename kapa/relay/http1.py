"""The HTTP/1.1 side of the relay: a server protocol that parses client requests with httptools and relays
each one to an upstream chosen by a `Handler`, streaming bodies both ways.

Requests: the head is rebuilt from the parsed pieces (httptools normalises whitespace, nothing else
changes: every header, `Forwarded`, `X-Forwarded-*`, `traceparent` included, passes in its order and
case), the body goes on chunk by chunk as it arrives (re-framed when chunked). Responses: bytes pass to
the client unchanged; the upstream side parses them only to learn where each ends.

Requests on one connection are served in order (pipelining works, without overlap); at most
MAX_PIPELINED wait behind the one being served, and the bytes kept for requests that have no upstream yet
are bounded by MAX_PENDING_BYTES: beyond either, the client is not read until they drain. A connection that
opens with the HTTP/2 preface is handed to `kapa.relay.h2c`; a request with `Upgrade` (or CONNECT) becomes
a byte pipe (`kapa.relay.tunnel`) when the upstream answers 101 (2xx to CONNECT). The client's bytes after
such a request are kept until then: they are in the new protocol, and an upstream that declines the
upgrade would parse them as requests nobody counted. After a declined upgrade the connection closes (those
bytes are dropped): they may be the new protocol's, and taking them as HTTP/1 requests is how a proxy in
front that believed the upgrade would be bypassed.

A request whose client is not being read while it waits for an upstream (its body held, or the buffer
bound reached) would not notice the client leave: the relay's periodic sweep polls those sockets and ends
such a request when its client has reset or shut down the connection. A client that shuts down its sending
side after a complete request still gets the answer (a half-close), unless the request has to wait for an
upstream: at TCP level a half-close and a close look the same, and a request kept waiting for a client that
closed is load that does not exist (HAProxy's `abortonclose` for queued requests).
"""

from __future__ import annotations

import asyncio
import re
import select
import time
from collections import deque
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from typing import Protocol

import httptools

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.relay.h2c import PREFACE, H2cRelay, H2cTunnel, H2Stream, stream_status
from kapa.relay.pool import Address, UpstreamConnection, UpstreamPool
from kapa.relay.tunnel import Pipe

log = get_logger(__name__)

#: Largest request head accepted (request line and headers); more gets 431.
MAX_HEAD_BYTES = 64 * 1024
#: Bytes of a client connection's requests the relay keeps while they have no upstream yet (bodies of
#: requests queued or connecting, heads of pipelined requests, bytes after an upgrade request) before the
#: client stops being read.
MAX_PENDING_BYTES = 256 * 1024
#: Requests read ahead on one connection, waiting behind the one being served (pipelining), before the
#: client stops being read.
MAX_PIPELINED = 64

#: Values of `Exchange.failure`: why the relay ended an exchange itself.
FAILURE_UPSTREAM = contract.REASON_UPSTREAM_ERROR
FAILURE_CLIENT_GONE = "client_gone"
#: The request turned out malformed after its head was taken (a bad chunk in its body).
FAILURE_BAD_REQUEST = contract.REASON_BAD_REQUEST

# Reasons the client connection is not being read (a bit mask, reading resumes when all are gone).
_PAUSED_PENDING = 1  # the connection's pending bytes are over MAX_PENDING_BYTES
_PAUSED_UPSTREAM = 2
_PAUSED_HELD = 4  # Exchange.hold_body
_PAUSED_PIPELINE = 8  # MAX_PIPELINED requests wait: the rest of the input is kept unparsed
_PAUSED_REFUSED = 16  # input the relay refused: nothing after it is read, ever
_PAUSED_EOF = 32  # the client shut down its sending side (see ServerProtocol.eof_received)
#: The reasons that outlive an exchange and change what follows it (see ServerProtocol._after_exchange).
_PAUSED_CONNECTION = _PAUSED_PIPELINE | _PAUSED_REFUSED | _PAUSED_EOF

#: Every request head ends with it (httptools takes no bare LF), so a stretch of input holds at most as many
#: complete heads as it has of these (one more when a head's end straddles two reads).
_HEAD_END = b"\r\n\r\n"
#: A (lower-cased) 101 response switching to h2c: the one protocol named in its Upgrade header.
_UPGRADE_TO_H2C = re.compile(rb"\r\nupgrade:[ \t]*h2c[ \t]*\r\n")
#: The shortest request head, `GET / HTTP/1.1` and an empty line.
_MIN_HEAD_BYTES = 18
#: A read no longer than this cannot hold more heads than an empty pipelining queue has room for (see
#: ServerProtocol._cut).
_SHORT_READ_BYTES = _MIN_HEAD_BYTES * (MAX_PIPELINED - 1)
#: What poll(2) reports for a socket whose peer shut it down (POLLRDHUP: FIN) or reset it (POLLHUP, POLLERR).
_CLIENT_LEFT = select.POLLRDHUP | select.POLLHUP | select.POLLERR

_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_HOST = b"\r\nhost:"
_TRANSFER_ENCODING = b"\r\ntransfer-encoding:"
_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}
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
        time, 429 too many pipelined behind a body in one read, 431 head too large)."""

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


def request_host(head_lower: bytes) -> bytes | None:
    """The Host header's value from a lower-cased request head."""
    start = head_lower.find(_HOST)
    if start < 0:
        return None
    start += len(_HOST)
    return head_lower[start : head_lower.index(b"\r\n", start)].strip()


def target_is_host(url: bytes, head_lower: bytes) -> bool:
    """Whether an absolute-form request target (`http://authority/path`) names the host of the Host header
    (default ports aside). The app must take the target's authority (RFC 9112 3.2.2) while the proxies
    route by Host: a request on which they differ would be routed for one host and served as another."""
    scheme, _, rest = url.lower().partition(b"://")
    end = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        found = rest.find(delimiter)
        if 0 <= found < end:
            end = found
    host = request_host(head_lower)
    if host is None:
        return False
    default_port = _DEFAULT_PORTS.get(scheme, b"")
    return rest[:end].removesuffix(default_port) == host.removesuffix(default_port)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing at a request the relay refuses: nothing after it is read."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _partial_head_bytes(data: bytes, body_bytes: int) -> int:
    """How many bytes of `data` belong to the request head it ends inside, which began in it: those after
    its last CRLFCRLF (a head has none before its end), less the `body_bytes` parsed from it, which may lie
    in between (a Content-Length body has no end mark). Never more than the truth, so never a false 431;
    at worst a read's body short, made up as the next read counts whole."""
    last_end = data.rfind(_HEAD_END)
    after = len(data) - (last_end + len(_HEAD_END) if last_end >= 0 else 0)
    return max(0, after - body_bytes)


def _end_of_heads(data: bytes, heads: int) -> int:
    """Where to cut `data` so that the part before holds at most `heads` complete request heads (plus one
    whose end straddles the previous read): just after its `heads`-th CRLFCRLF, or its end."""
    end = 0
    for _ in range(heads):
        found = data.find(_HEAD_END, end)
        if found < 0:
            return len(data)
        end = found + len(_HEAD_END)
    return end


@dataclass(frozen=True)
class ClientTimeouts:
    """How long an HTTP/1 client connection may take over a request head, and stay idle between requests.

    Without them a client that trickles a head (slowloris) or never sends one holds its connection, and
    what the relay keeps for it, forever. A head that is not complete `header_read_s` after the
    connection opened (first request) or after its own first byte (later ones) gets 408 and the close;
    a connection that sent nothing at all is just closed, as is a keep-alive connection idle for
    `idle_s` between requests. Checked by one sweep over the connections (every `sweep_interval_s`), so
    a timeout fires up to one interval late and costs the request path nothing.
    An h2c connection with no stream at the app for `idle_s` gets GOAWAY and is closed the same way.
    Not covered: WebSocket and other upgraded connections, which live as long as both ends want.
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
    enforces `timeouts`, ends requests waiting unread whose client has left, and closes upstream
    connections idle in the pool too long; `close_all` ends it.
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
        """Expire client connections past their header-read or idle timeout, end the waiting requests of
        clients that have left (see `end_abandoned`), and close stale pooled upstream connections."""
        timeouts = self.timeouts
        unread: list[ServerProtocol] = []
        for connection in list(self.connections):
            if isinstance(connection, ServerProtocol):
                connection.expire(now, timeouts)
                if connection.waits_unread:
                    unread.append(connection)
            elif isinstance(connection, H2cRelay):
                connection.expire(now, timeouts)  # idle h2c connections: see H2cRelay.expire
        if unread:
            end_abandoned(unread)
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


def end_abandoned(connections: list[ServerProtocol]) -> None:
    """End the request of each of `connections` (each `waits_unread`) whose client has reset the connection
    or shut it down: one poll(2) over their sockets, without waiting.

    The event loop does not poll a socket it is not reading, so without this a client that gives up on a
    held request goes unnoticed until the request is forwarded: its concurrency is reported, it takes a
    place in a bounded queue, and then an upstream serves it for nobody. A FIN counts as leaving too (see
    the module docstring). Linux only (POLLRDHUP), as is the relay's deployment."""
    poller = select.poll()
    by_fd: dict[int, ServerProtocol] = {}
    for connection in connections:
        fd = connection.transport.get_extra_info("socket").fileno()
        by_fd[fd] = connection
        poller.register(fd, _CLIENT_LEFT)
    for fd, _ in poller.poll(0):
        by_fd[fd].transport.abort()  # connection_lost ends the request: FAILURE_CLIENT_GONE


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
        #: The body is chunked (set at its first chunk): re-framed as it goes upstream.
        self.chunked = False
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
        body buffer. The client connection is not read meanwhile; the relay's sweep notices a client that
        resets or closes it, and ends the exchange (FAILURE_CLIENT_GONE) within a sweep interval.
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
        idempotent (RFC 9110 9.2.2) or it carries Idempotency-Key, and none of its body has gone upstream,
        so nothing consumed is lost. What browsers and Go's transport require before retrying on a new
        connection."""
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

    @property
    def waiting_for_upstream(self) -> bool:
        """The handler has not sent the request anywhere yet (it is held or queued) nor answered it."""
        return self.address is None and not self.response_started and not self.done

    # --- request side (called by ServerProtocol) ---------------------------------------------------------

    def malformed(self, status: int, body: bytes) -> None:
        """The request's body turned out malformed: one outcome, FAILURE_BAD_REQUEST with `status` if
        nothing of the response has gone to the client yet (the connection closes after it), else the
        response is cut. The upstream connection, which has part of the request, is closed either way."""
        self.failure = FAILURE_BAD_REQUEST
        self.respond(status, body, close=True)

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
        size = sum(map(len, parts))
        self.pending_bytes += size
        self.server.buffered(size)

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
            transport.writelines([self.head, *pending])
            self.body_sent = True
            self.server.unbuffered(self.pending_bytes)
            self.pending_bytes = 0
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
        # The upstream connection is clean even after a declined upgrade: the client's bytes after the
        # upgrade request never went to it.
        if conn.keep_alive and self.request_complete:
            self.server.relay.pool.put(conn)
        else:
            conn.transport.close()
        # After a declined upgrade the client connection closes (see the module docstring).
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

    def upgrade_accepted(self, conn: UpstreamConnection, after_head: bytes, response_head: bytes) -> None:
        """The upstream answered 101 (2xx to CONNECT): from now on both connections are a byte pipe (or an
        h2c relay), which starts with the client's bytes kept since the request. h2c only when the app's 101
        names it (RFC 9110 7.8: the response's Upgrade is the protocol switched to): a request may offer
        several, and an app that chose another has a byte pipe, whose bytes are no streams to count."""
        self._detach(conn)
        self.upgraded = True
        server = self.server
        if server.closed:
            conn.transport.close()
            self._finish(False)
            return
        after_request = server.hand_over()
        relay = server.relay
        if b"\r\nupgrade: h2c" in self.head_lower and _UPGRADE_TO_H2C.search(response_head.lower()):
            h2c = H2cRelay(relay, server.transport, upgraded=self)
            relay.connections.add(h2c)
            h2c.start(conn.transport, to_upstream=after_request, upstream_sent=after_head)
        else:
            pipe = Pipe(server.transport, conn.transport, lambda: self._pipe_closed(pipe))
            relay.connections.add(pipe)
            pipe.start(to_upstream=after_request)

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
        server = self.server
        if self.pending is not None:
            self.pending = None
            server.unbuffered(self.pending_bytes)
        server.handler.request_finished(self)
        server.exchange_finished(self, keep_client)


class ServerProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "relay", "handler", "transport", "closed", "handed_over", "write_paused", "paused",
        "_parser", "_url", "_headers", "_parsing", "_active", "_waiting", "_fresh", "_prefix",
        "_head_started", "_head_bytes", "_body_bytes", "_upgrading", "_after_upgrade", "_unparsed",
        "_pending_bytes", "_refusal", "_heads", "_mark", "_marked_at",
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
        self._head_bytes = 0  # of the head under way, counted when a read ends inside it
        self._body_bytes = 0  # request body bytes parsed on this connection
        self._upgrading: Exchange | None = None
        #: Client bytes after an upgrade (or CONNECT) request, kept until the upstream accepts it.
        self._after_upgrade = b""
        #: Input kept unparsed while MAX_PIPELINED requests wait (see `_cut`).
        self._unparsed = b""
        #: Bytes kept for requests that have no upstream yet (see MAX_PENDING_BYTES).
        self._pending_bytes = 0
        #: (status, body) of refused input, answered once the requests before it are.
        self._refusal: tuple[int, bytes] | None = None
        #: Request heads completed on this connection, and the sweep's record of the state it last saw
        #: (heads, waiting for a head?) and since when (see `expire`).
        self._heads = 0
        self._mark: tuple[int, bool] | None = None
        self._marked_at = 0.0

    @property
    def idle(self) -> bool:
        return self._active is None

    @property
    def waits_unread(self) -> bool:
        """Its request waits for an upstream while the client is not read (its body held, the buffer bound
        reached, or after a FIN): the event loop would not see the client leave (see `end_abandoned`)."""
        active = self._active
        return (
            active is not None and self.paused != 0 and active.waiting_for_upstream and not self.transport.is_closing()
        )

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
        self._unparsed = b""
        active = self._active
        if active is not None:
            active.client_lost()

    def data_received(self, data: bytes) -> None:
        if self._fresh:
            data = self._sniff(data)
            if not data:
                return
        while data:
            if self._upgrading is not None:
                self._keep_after_upgrade(data)
                return
            rest = b""
            if self._waiting or len(data) > _SHORT_READ_BYTES:
                data, rest = self._cut(data)  # might hold more request heads than the queue has room for
                if not data:
                    return
            carried = self._head_started  # a head under way since an earlier read
            heads, body_bytes = self._heads, self._body_bytes
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                self._upgrade_requested(data[upgrade.args[0]:])
            except httptools.HttpParserCallbackError as error:
                refused = error.__context__
                if isinstance(refused, _Refused):
                    self._reject(refused.status, refused.body)
                else:
                    log.error("relay bug while handling a request", error=repr(refused))
                    self._reject(500, b"kapa: internal error\n")
                return
            except httptools.HttpParserError as error:
                self._reject(400, b"kapa: malformed HTTP request: %s\n" % str(error).encode())
                return
            else:
                if self._head_started:  # the read ends inside a head: count that head's bytes, only those
                    if carried and self._heads == heads:
                        self._head_bytes += len(data)
                    else:
                        self._head_bytes = _partial_head_bytes(data, self._body_bytes - body_bytes)
                    if self._head_bytes > MAX_HEAD_BYTES:
                        self._reject(431, b"kapa: request head larger than %d bytes\n" % MAX_HEAD_BYTES)
            if not rest or self.paused & _PAUSED_REFUSED or self.transport.is_closing():
                return
            data = rest

    def eof_received(self) -> bool:
        """The client shut down its sending side. What it sent whole is still answered, and then the
        connection closes (a half-close); a client that stops inside a request, or whose request waits for
        an upstream, is taken as gone (see the module docstring): False closes the connection."""
        active = self._active
        if (
            active is None or active.waiting_for_upstream or self._parsing is not None or self._head_started
            or self._prefix or self._upgrading is not None
        ):
            return False
        self.pause(_PAUSED_EOF)  # for good: there is nothing more to read
        return True

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
        url = self._url
        if self._headers:
            head = b"%s %s HTTP/%s\r\n%s\r\n\r\n" % (method, url, version_bytes, b"\r\n".join(self._headers))
        else:
            head = b"%s %s HTTP/%s\r\n\r\n" % (method, url, version_bytes)
        # A _Refused raised here stops the parser at this request: none after it is parsed.
        if len(head) > MAX_HEAD_BYTES:
            raise _Refused(431, b"kapa: request head larger than %d bytes\n" % MAX_HEAD_BYTES)
        head_lower = head.lower()
        if head_lower.count(_HOST) > 1:
            raise _Refused(400, b"kapa: more than one Host header (RFC 9112 3.2)\n")
        if not url:  # `CONNECT ` (the parser takes an empty target only there)
            raise _Refused(400, b"kapa: no request target\n")
        if method == b"PRI":  # the parser lets it through only without a version (as HTTP/0.9)
            # The HTTP/2 preface's method (RFC 9113 3.4), no request: an llhttp app waits for the rest of a
            # preface, and would never answer.
            raise _Refused(400, b"kapa: PRI is the HTTP/2 connection preface's method, not a request\n")
        # Absolute-form: anything but "/...", "*" (OPTIONS) and CONNECT's authority-form.
        if url[0] != 0x2F and method != b"CONNECT" and url != b"*" and not target_is_host(url, head_lower):
            raise _Refused(400, b"kapa: the request target names another host than the Host header\n")
        if version != "1.1" and _TRANSFER_ENCODING in head_lower:
            raise _Refused(400, b"kapa: Transfer-Encoding in an HTTP/%s request (RFC 9112 6.1)\n" % version_bytes)
        exchange = Exchange(
            self, method, url, head, head_lower, parser.should_keep_alive(), parser.should_upgrade(),
            time.monotonic(),
        )
        if self._active is None:
            self._parsing = self._active = exchange
            self.handler.request_received(exchange)
            return
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = deque()
        elif len(waiting) >= MAX_PIPELINED:
            # Possible only behind the end of a body in the same read (see `_cut`): refused in its turn.
            raise _Refused(429, b"kapa: more than %d pipelined requests waiting\n" % MAX_PIPELINED)
        self._parsing = exchange
        waiting.append(exchange)
        self.buffered(len(head))

    def on_chunk_header(self) -> None:
        exchange = self._parsing
        if exchange is not None:
            exchange.chunked = True

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
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

    def buffered(self, size: int) -> None:
        """`size` more bytes are kept for requests that have no upstream yet."""
        self._pending_bytes += size
        if self._pending_bytes > MAX_PENDING_BYTES:
            self.pause(_PAUSED_PENDING)

    def unbuffered(self, size: int) -> None:
        """`size` bytes counted by `buffered` are gone (sent upstream, or dropped)."""
        self._pending_bytes -= size
        if self._pending_bytes <= MAX_PENDING_BYTES:
            self.resume(_PAUSED_PENDING)

    def exchange_finished(self, exchange: Exchange, keep: bool) -> None:
        if self.handed_over:
            return
        if self._active is exchange:
            self._active = None
        if self.paused:
            self.resume(_PAUSED_HELD | _PAUSED_UPSTREAM)  # the exchange's own reasons; the others stand
        if not keep or self.closed or self.relay.closing:
            self._waiting = None
            self._unparsed = b""
            if not self.closed:
                self.transport.close()  # after what was written
            return
        waiting = self._waiting
        if waiting:
            following = waiting.popleft()
            self.unbuffered(len(following.head))
            self._active = following
            self.handler.request_received(following)
        if self.paused & _PAUSED_CONNECTION:
            self._after_exchange()

    def _after_exchange(self) -> None:
        """An exchange ended on a connection not read for a reason of its own: parse the input kept back
        if the pipelining queue has room now; once no request is left, answer refused input, or close
        after the client's FIN (all it asked for is answered)."""
        if self._unparsed:
            self._read_unparsed()
        elif self._active is None:
            if self._refusal is not None:
                self._send_refusal()
            elif self.paused & _PAUSED_EOF:
                self.transport.close()

    def hand_over(self) -> bytes:
        """The transport now belongs to a pipe or h2c relay: stop parsing and tracking it here. Returns the
        client's bytes after the upgrade request, for the upstream."""
        self.handed_over = True
        self.relay.connections.discard(self)
        self._active = None
        self._upgrading = None
        self.paused = 0
        after_upgrade, self._after_upgrade = self._after_upgrade, b""
        return after_upgrade

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

    def _cut(self, data: bytes) -> tuple[bytes, bytes]:
        """Split `data` into what may be parsed now and what after it: no more request heads than the
        pipelining queue has room for. With no room, nothing now: all of it is kept unparsed, and the
        client not read, until the queue drains.

        httptools cannot stop inside the bytes it is given, hence the cut before parsing. It is made where
        a read begins between requests; a read that begins inside a body (an upload's: its bytes are not
        worth a scan each) is parsed whole, and requests pipelined behind the end of that body in the same
        read are refused beyond the queue's room (`on_headers_complete`)."""
        waiting = self._waiting
        room = MAX_PIPELINED - 1 - (len(waiting) if waiting else 0)  # 1 for a head straddling two reads
        if len(data) <= _MIN_HEAD_BYTES * room:
            return data, b""
        if room <= 0:
            self._unparsed = data
            self.pause(_PAUSED_PIPELINE)
            return b"", b""
        if self._parsing is not None:
            return data, b""
        end = _end_of_heads(data, room)
        return (data, b"") if end == len(data) else (data[:end], data[end:])

    def _read_unparsed(self) -> None:
        """The pipelining queue has room again: parse the input kept back, then read the client again."""
        data, self._unparsed = self._unparsed, b""
        self.resume(_PAUSED_PIPELINE)  # no byte arrives before this returns; it pauses again if need be
        self.data_received(data)

    def _upgrade_requested(self, after_request: bytes) -> None:
        exchange = self._waiting[-1] if self._waiting else self._active
        if exchange is None or exchange.done:
            return  # refused already (and the connection is closing)
        self._upgrading = exchange
        if after_request:
            self._keep_after_upgrade(after_request)

    def _keep_after_upgrade(self, data: bytes) -> None:
        """The client's bytes after an upgrade request go upstream only once the upstream accepts it."""
        self._after_upgrade += data
        self.buffered(len(data))

    def _reject(self, status: int, body: bytes) -> None:
        """Refuse input the parser cannot take: nothing after it is read, and the connection closes after
        the answer. Inside the body of the request being served the answer is that exchange's one outcome
        (`Exchange.malformed`); anywhere else it is answered in its turn, after the requests before it, and
        reported by `malformed_request`."""
        self.pause(_PAUSED_REFUSED)
        self._unparsed = b""
        parsing, self._parsing = self._parsing, None
        if parsing is not None and not parsing.done:
            if parsing is self._active:
                parsing.malformed(status, body)
                return
            assert self._waiting is not None
            self._waiting.remove(parsing)  # never handed to the handler: refused as a bad head would be
        self._refusal = (status, body)
        if self._active is None:
            self._send_refusal()

    def _send_refusal(self) -> None:
        refusal, self._refusal = self._refusal, None
        if refusal is None or self.closed:
            return
        status, body = refusal
        self.handler.malformed_request(status)
        self.transport.write(local_response(status, body, keep_alive=False))
        self.transport.close()
