"""The activator's serving side: a `kapa.relay` handler that routes, holds, forwards and counts.

For each request: route it (path prefix, then Host) to a service, else 404. Ask the service's throttler
for a pod slot: if one is free it is forwarded at once, on the relay's pooled connection, marked with
PROXY_HEADER. If not, the request is held (503 with Retry-After when the queue is full): a service with
no ready pod is an activation, and the scaler is poked. A held request is forwarded the moment a slot
appears, or gets 504 at the service's timeout. When the exchange ends, however it ends (answered, client
gone, pod gone), the relay calls `request_finished` exactly once: the slot goes back, the response is
counted, and a pod whose request failed is taken out and probed again.

The relay does the HTTP itself (parsing, streaming bodies with flow control, upgrades, keep-alive). A
held request with a body is not read until it is forwarded, so what a held request costs is its head.
A pod that refuses the connection (gone before its endpoint update arrived) sends the request back to
wait for another pod; a pooled connection that closes under a request the relay deems replayable is
followed by a fresh one to the same pod, so a dead pod's stale connections cost nothing either; a pod
that fails once the request is on its way costs that request a 502.

A prior-knowledge h2c (gRPC) connection is routed by its first request, held as one request while the
service is at zero, then pinned to one pod (see `_h2c`).

Only kapa.relay's public API is used: `hold_body` keeps a held upload unread, `set_request_header` adds
the proxy mark, and `request_undelivered` (the relay's hook for a request lost on a stale connection)
sends the request again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.relay import (
    FAILURE_UPSTREAM,
    MAX_HEAD_BYTES,
    ClientTimeouts,
    Exchange,
    H2cTunnel,
    H2Stream,
    RelayServer,
    request_host,
    stream_status,
)
from kapa.core.services import ServiceKey

from activator.backends import Backends
from activator.lb_policy import PodTracker
from activator.poke import Poker
from activator.routing import Router
from activator.service import Service
from activator.throttler import HoldTimeout, QueueFull

log = get_logger(__name__)

_PROXY_NAME = contract.PROXY_HEADER.encode()
_PROXY_VALUE = contract.PROXY_HEADER_VALUE.encode()
_CONTENT_LENGTH = b"\r\ncontent-length:"
_TRANSFER_ENCODING = b"\r\ntransfer-encoding:"
#: Seconds a client is told to wait before retrying when a service's queue is full.
RETRY_AFTER_S = 1
#: A pod that has not accepted a connection by then is taken as gone (a pod on a lost node answers nothing,
#: and the kernel would keep trying for minutes); the gateway's connect timeout too.
CONNECT_TIMEOUT_S = 1.0


class _Ticket:
    """The handler's state of one exchange (kept in `exchange.tag`)."""

    __slots__ = ("service", "pod", "waiter", "cold", "arrived_at", "marked")

    def __init__(self, service: Service, arrived_at: float) -> None:
        self.service = service
        self.pod: PodTracker | None = None
        self.waiter: asyncio.Task[None] | None = None
        #: Arrived while the service had no ready pod: its wait is a cold-start wait.
        self.cold = False
        self.arrived_at = arrived_at
        #: PROXY_HEADER is in the head already (a request sent back to wait keeps it).
        self.marked = False


def request_has_body(head_lower: bytes) -> bool:
    """Whether a (lower-cased) request head announces a body: chunked, or a Content-Length above zero."""
    if _TRANSFER_ENCODING in head_lower:
        return True
    start = head_lower.find(_CONTENT_LENGTH)
    if start < 0:
        return False
    start += len(_CONTENT_LENGTH)
    return head_lower[start : head_lower.index(b"\r\n", start)].strip() not in (b"0", b"")


class ActivatorProxy:
    """The relay handler (see kapa.relay.http1.Handler) and the listener it serves."""

    def __init__(
        self, services: Mapping[ServiceKey, Service], router: Router, backends: Backends, poker: Poker,
        timeouts: ClientTimeouts = ClientTimeouts(),
    ) -> None:
        self._services = services
        self._router = router
        self._backends = backends
        self._poker = poker
        self.relay = RelayServer(self, timeouts=timeouts)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.relay.protocol, host, port, reuse_address=True, backlog=4096)

    def stop_accepting(self) -> None:
        """No new connections; open ones close once idle (responses say nothing, the close tells)."""
        if self._server is not None:
            self._server.close()
        self.relay.close_idle()

    def busy(self) -> int:
        """Client connections with an exchange under way (or upgraded)."""
        return sum(1 for connection in self.relay.connections if not connection.idle)

    async def close(self) -> None:
        self.stop_accepting()
        self.relay.close_all()

    # --- kapa.relay Handler ------------------------------------------------------------------------

    def request_received(self, exchange: Exchange) -> None:
        key = self._router.route(request_host(exchange.head_lower), exchange.url)
        if key is None:
            host = request_host(exchange.head_lower) or b"(none)"
            exchange.respond(404, b"kapa activator: no service for host %s and path %s\n" % (host, exchange.url))
            return
        service = self._services[key]
        ticket = _Ticket(service, exchange.started_at)
        exchange.tag = ticket
        throttler = service.throttler
        pod = throttler.try_acquire()
        if pod is not None:
            self._forward(exchange, ticket, pod)
            return
        if throttler.ready_count == 0:
            ticket.cold = True
            self._poker.activate(key)
        if request_has_body(exchange.head_lower):
            # A body is coming: read none of it while held, so 10,000 held uploads cost their heads, not
            # the relay's per-exchange buffer each. (A body-less request stays read, so a client that
            # gives up is noticed at once and frees its place.)
            exchange.hold_body()
        ticket.waiter = asyncio.get_running_loop().create_task(self._hold(exchange, ticket))

    async def _hold(self, exchange: Exchange, ticket: _Ticket) -> None:
        service = ticket.service
        remaining_s = service.settings.timeout_s - (time.monotonic() - ticket.arrived_at)
        try:
            pod = await service.throttler.acquire(max(0.0, remaining_s))
        except QueueFull:
            service.stats.count_rejected(contract.REASON_QUEUE_FULL)
            exchange.respond(
                503,
                b"kapa activator: %d requests are already waiting for service %s; retry later\n"
                % (service.throttler.held, str(service.settings.key).encode()),
                extra_headers=b"Retry-After: %d\r\n" % RETRY_AFTER_S,
            )
            return
        except HoldTimeout:
            service.stats.count_rejected(contract.REASON_TIMEOUT)
            exchange.respond(504, b"kapa activator: no pod of service %s took the request within %gs\n"
                             % (str(service.settings.key).encode(), service.settings.timeout_s))
            return
        finally:
            ticket.waiter = None
            self._end_activation_when_idle(service)
        if ticket.cold:
            ticket.cold = False  # observed once, even if the request is sent back to wait
            service.stats.observe_cold_start(time.monotonic() - ticket.arrived_at)
        self._forward(exchange, ticket, pod)

    def _forward(self, exchange: Exchange, ticket: _Ticket, pod: PodTracker) -> None:
        ticket.pod = pod
        if not ticket.marked:
            ticket.marked = True
            # Replacing (not adding) also keeps a client from sending its own value through.
            exchange.set_request_header(_PROXY_NAME, _PROXY_VALUE)
        address = (pod.endpoint.host, pod.endpoint.port)
        idle = self.relay.pool.take(address)
        if idle is not None:
            exchange.forward_on(idle)  # the hot path: a pooled keep-alive connection
        else:
            ticket.waiter = asyncio.get_running_loop().create_task(self._connect_and_forward(exchange, ticket, address))

    async def _connect_and_forward(self, exchange: Exchange, ticket: _Ticket, address: tuple[str, int]) -> None:
        """Open the connection before handing the request over, so a pod that refuses it (gone since the
        last endpoint update reached us) costs the request nothing: it waits for another pod instead. So
        does a pod that does not answer within CONNECT_TIMEOUT_S (its node gone: nobody refuses)."""
        pool = self.relay.pool
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                conn = await pool.connect(address)
        except OSError as error:  # TimeoutError included
            pod, ticket.pod = ticket.pod, None
            assert pod is not None
            service = ticket.service
            self._backends.suspect(service.settings.key, pod.endpoint)  # first: no waiter may get it back
            pool.discard(address)  # its idle connections would each fail once more
            service.throttler.release(pod)
            reason = f"no answer in {CONNECT_TIMEOUT_S}s" if isinstance(error, TimeoutError) else error.strerror or str(error)
            log.warning("pod did not take a connection; request waits for another", service=str(service.settings.key),
                        endpoint=str(pod.endpoint), error=reason)
            ticket.waiter = asyncio.get_running_loop().create_task(self._hold(exchange, ticket))
            return
        ticket.waiter = None
        exchange.forward_on(conn)

    def request_undelivered(self, exchange: Exchange) -> None:
        """A pooled connection to the pod closed under a request that is safe to send again: a fresh
        connection tells a stale connection (sent there) from a pod gone (refused: the request waits for
        another pod, as in `_connect_and_forward`)."""
        ticket: _Ticket | None = exchange.tag  # type: ignore[assignment]
        if ticket is None or ticket.pod is None:
            exchange.respond(502, b"kapa activator: the pod closed the connection before responding\n")
            return
        address = (ticket.pod.endpoint.host, ticket.pod.endpoint.port)
        ticket.waiter = asyncio.get_running_loop().create_task(self._connect_and_forward(exchange, ticket, address))

    def request_finished(self, exchange: Exchange) -> None:
        ticket: _Ticket | None = exchange.tag  # type: ignore[assignment]
        if ticket is None:  # answered by the router (404)
            return
        exchange.tag = None
        service = ticket.service
        service.stats.count_response(exchange.status)
        if ticket.waiter is not None:  # the client left while its request was held (or connecting)
            ticket.waiter.cancel()
        pod = ticket.pod
        if pod is not None:
            ticket.pod = None
            if exchange.failure == FAILURE_UPSTREAM:
                self._backends.suspect(service.settings.key, pod.endpoint)
            service.throttler.release(pod)

    def _end_activation_when_idle(self, service: Service) -> None:
        if service.throttler.held == 0:
            self._poker.end(service.settings.key)

    def malformed_request(self, status: int) -> None:
        return None  # answered by the relay; not attributable to a service

    # --- h2c (gRPC): a connection at a time -----------------------------------------------------------

    def h2c_connection(self, tunnel: H2cTunnel) -> None:
        asyncio.get_running_loop().create_task(self._h2c(tunnel))

    async def _h2c(self, tunnel: H2cTunnel) -> None:
        """Route a prior-knowledge h2c connection by its first request, hold it while the service has no
        pod, then pin it to one pod for its life (a frame relay cannot spread its streams). The pod slot is
        given back once the connection is on its way: the streams are counted, and the pod's queue-proxy
        limits them (SETTINGS_MAX_CONCURRENT_STREAMS); an h2c client keeps its connection for long, so a
        slot held for that long would starve every other request."""
        headers = await tunnel.read_request(self.relay.timeouts.header_read_s, MAX_HEAD_BYTES)
        if headers is None:
            tunnel.close()
            return
        path = headers.get(b":path", b"/")
        key = self._router.route(headers.get(b":authority") or headers.get(b"host"), path)
        if key is None:
            log.info("h2c connection for no service closed", authority=headers.get(b":authority", b"").decode("latin-1"))
            tunnel.close()
            return
        service = self._services[key]
        throttler = service.throttler
        tunnel.relay.tag = service
        arrived_at = time.monotonic()
        cold = False
        while True:  # until a pod takes the connection: one that refuses it is out, and we wait again
            pod = throttler.try_acquire()
            if pod is None:
                cold = cold or throttler.ready_count == 0
                if cold:
                    self._poker.activate(key)
                remaining_s = service.settings.timeout_s - (time.monotonic() - arrived_at)
                try:
                    # The client is watched while held: once it has reset its streams or hung up, its place
                    # in the queue (and in the exported concurrency) goes at once, and nothing is forwarded.
                    pod = await tunnel.hold(throttler.acquire(max(0.0, remaining_s)), MAX_HEAD_BYTES)
                except (QueueFull, HoldTimeout) as error:
                    reason = contract.REASON_QUEUE_FULL if isinstance(error, QueueFull) else contract.REASON_TIMEOUT
                    service.stats.count_rejected(reason)
                    log.warning("h2c connection closed unserved", service=str(key), reason=reason)
                    tunnel.close()
                    return
                finally:
                    self._end_activation_when_idle(service)
                if pod is None:
                    service.stats.count_response(499)  # nginx's "client closed request", as for HTTP/1
                    tunnel.close()
                    return
            address = (pod.endpoint.host, pod.endpoint.port)
            connected = await tunnel.forward_now(
                address, add_setting=(contract.H2C_PROXY_SETTING, 1), connect_timeout_s=CONNECT_TIMEOUT_S
            )
            if not connected:
                self._backends.suspect(key, pod.endpoint)  # first: no waiter may get it back
            throttler.release(pod)
            if connected:
                break
            log.warning("pod did not take an h2c connection; it waits for another", service=str(key),
                        endpoint=str(pod.endpoint))
        if cold:
            service.stats.observe_cold_start(time.monotonic() - arrived_at)

    def stream_opened(self, stream: H2Stream) -> None:
        service: Service | None = stream.connection.tag if stream.connection is not None else None  # type: ignore[assignment]
        if service is not None:
            stream.tag = service
            service.throttler.track_stream(+1)

    def stream_closed(self, stream: H2Stream) -> None:
        service: Service | None = stream.tag  # type: ignore[assignment]
        if service is not None:
            service.throttler.track_stream(-1)
            service.stats.count_response(stream_status(stream))

