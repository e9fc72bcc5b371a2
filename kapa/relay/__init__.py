"""A fast HTTP relay on asyncio protocols (uvloop + httptools), shared by the queue-proxy and the activator.

It knows nothing about counting, limits or routing: a `Handler` decides those. The pieces:

- `RelayServer(handler, pool)`: pass `relay.protocol` to `loop.create_server`. Each request's head is
  parsed into an `Exchange`; `handler.request_received(exchange)` then calls `exchange.forward((host,
  port))` (relay to an upstream, bodies streamed both ways with flow control) or `exchange.respond(status,
  body, extra_headers=...)`, now or later (or `exchange.forward_on(conn)` with a connection the handler
  opened through the pool itself). Before forwarding, `exchange.set_request_header(name, value)` adds or
  replaces a header, and `exchange.hold_body()` leaves the body unread until the exchange is forwarded
  (for a request that waits). `handler.request_finished(exchange)` follows exactly once however it ends,
  with `exchange.status` set to what the client got and `exchange.failure` saying why the relay ended it
  (FAILURE_CLIENT_GONE also for a waiting request whose client reset or closed the connection, noticed
  by the relay's sweep even while the client is not read; FAILURE_BAD_REQUEST for a malformed body).
  `handler.malformed_request(status)` reports input refused before it became an exchange (400/408/429/
  431). `handler.request_undelivered(exchange)` is asked to send again a request lost on a stale
  keep-alive connection when `exchange.replayable()`. `request_host(head_lower)` reads the Host header.
- `ClientTimeouts`: the header-read and idle keep-alive timeouts of client connections (`RelayServer(...,
  timeouts=)`), against clients that trickle a head or sit on a connection.
- `UpstreamPool`: keep-alive upstream connections keyed by (host, port), closed after idling 30 s.
- WebSocket and other upgrades (CONNECT too): when the upstream answers 101 (2xx to CONNECT) the
  connection becomes a byte `Pipe`; the exchange finishes when the pipe closes. The client's bytes after
  the request reach the upstream only then.
- h2c (prior knowledge, or `Upgrade: h2c`): `handler.h2c_connection(tunnel)` picks the upstream with
  `tunnel.forward(address, max_streams=, add_setting=)` (or `await tunnel.forward_now(...)`, which says
  whether the upstream took the connection), after `await tunnel.read_request(...)` when it routes by the
  first request's headers and `await tunnel.hold(...)` while it waits for an upstream (None when the
  client gives up meanwhile); frames are relayed unchanged (streams beyond `max_streams` are refused) and
  each stream is reported through `handler.stream_opened(stream)` / `handler.stream_closed(stream)` while
  it is at the app (`H2Stream`, see `stream_status`; `stream.cancel(status)` resets one). Rapid resets get
  the connection closed (GOAWAY), and so does idling `timeouts.idle_s` with no stream at the app.
- `serve_routes`: a small HTTP server for a proxy's own GET endpoints (metrics, readiness).
"""

from __future__ import annotations

from kapa.relay.h2c import H2cTunnel, H2Stream, stream_status
from kapa.relay.http1 import (
    FAILURE_BAD_REQUEST,
    FAILURE_CLIENT_GONE,
    FAILURE_UPSTREAM,
    MAX_HEAD_BYTES,
    ClientTimeouts,
    Exchange,
    Handler,
    RelayServer,
    local_response,
    request_host,
)
from kapa.relay.pool import Address, UpstreamPool
from kapa.relay.routes import Route, serve_routes
from kapa.relay.tunnel import Pipe

__all__ = [
    "FAILURE_BAD_REQUEST",
    "FAILURE_CLIENT_GONE",
    "FAILURE_UPSTREAM",
    "MAX_HEAD_BYTES",
    "Address",
    "ClientTimeouts",
    "Exchange",
    "H2Stream",
    "H2cTunnel",
    "Handler",
    "Pipe",
    "RelayServer",
    "Route",
    "UpstreamPool",
    "local_response",
    "request_host",
    "serve_routes",
    "stream_status",
]
