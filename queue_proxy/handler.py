"""What the queue-proxy does with each request: answer probes itself, count, limit, time out, forward.

Per request this is a few integer updates (`RequestStats`), at most a deque operation (`ConcurrencyLimiter`)
and two dict operations (the timeout watch); no Prometheus object, no log line, no timer is touched.
"""

from __future__ import annotations

import asyncio
import time

from kapa.core import contract
from kapa.relay import FAILURE_BAD_REQUEST, FAILURE_UPSTREAM, Exchange, H2cTunnel, H2Stream, stream_status
from queue_proxy.config import Config
from queue_proxy.limiter import ADMITTED, QUEUED, ConcurrencyLimiter
from queue_proxy.readiness import Readiness
from queue_proxy.stats import RequestStats

# The relay rebuilds header lines as `name: value` and lower-cases the head once, so a header test is one
# substring search.
_PROBE_LINE = f"\r\n{contract.PROBE_HEADER}: {contract.PROBE_HEADER_VALUE}\r\n".lower().encode()
_PROXIED_LINE = f"\r\n{contract.PROXY_HEADER}: {contract.PROXY_HEADER_VALUE}\r\n".lower().encode()
# The activator's mark on an h2c connection: first in the client's first SETTINGS payload.
_PROXIED_SETTING = contract.H2C_PROXY_SETTING.to_bytes(2, "big") + (1).to_bytes(4, "big")

# Exchange.tag: how the exchange was counted.
_NOT_COUNTED = None  # answered by the proxy itself (a probe)
#: Exchange.failure values counted as rejections when the relay ends an exchange (each is a reason).
_REJECTING_FAILURES = frozenset((FAILURE_UPSTREAM, FAILURE_BAD_REQUEST))

_QUEUE_FULL_BODY = (
    b"kapa queue-proxy: overloaded: %d requests at the app (CONTAINER_CONCURRENCY) and %d waiting, "
    b"the queue is full; retry later\n"
)


class QueueProxyHandler:
    """The relay `Handler` of the queue-proxy; see the package README for the behaviour."""

    def __init__(self, config: Config, stats: RequestStats, readiness: Readiness) -> None:
        self.config = config
        self.stats = stats
        self.readiness = readiness
        self.upstream = (config.upstream_host, config.user_port)
        self.limiter = (
            ConcurrencyLimiter(config.container_concurrency, config.queue_depth, self._admit)
            if config.container_concurrency > 0 else None
        )
        #: Exchanges whose response has not started, in arrival order (= deadline order, one timeout for all).
        self._watched: dict[Exchange, None] = {}
        #: The same for h2c streams.
        self._watched_streams: dict[H2Stream, None] = {}

    # --- relay Handler ----------------------------------------------------------------------------

    def request_received(self, exchange: Exchange) -> None:
        head = exchange.head_lower
        if _PROBE_LINE in head:
            # The activator's probe through the serving port: answered here, never forwarded or counted.
            ready = self.readiness.ready
            exchange.respond(200 if ready else 503, b"queue\n" if ready else b"not ready\n")
            return
        proxied = _PROXIED_LINE in head
        exchange.tag = proxied
        self.stats.started(exchange.started_at, proxied)
        self._watched[exchange] = None
        limiter = self.limiter
        if limiter is None:
            exchange.forward(self.upstream)
            return
        outcome = limiter.acquire(exchange)
        if outcome == ADMITTED:
            exchange.forward(self.upstream)
        elif outcome == QUEUED:
            self.stats.queued += 1
        else:
            self.stats.reject(contract.REASON_QUEUE_FULL)
            exchange.respond(503, _QUEUE_FULL_BODY % (limiter.capacity, len(limiter.waiting)))

    def request_finished(self, exchange: Exchange) -> None:
        proxied = exchange.tag
        if proxied is _NOT_COUNTED:
            return
        self._watched.pop(exchange, None)
        if self.limiter is not None:
            self.limiter.release(exchange)
        failure = exchange.failure
        if failure is not None and failure in _REJECTING_FAILURES:
            self.stats.reject(failure)
        self.stats.finished(time.monotonic(), exchange.started_at, proxied, exchange.status)  # type: ignore[arg-type]

    def request_undelivered(self, exchange: Exchange) -> None:
        # A stale keep-alive connection to the app: again, on another (or a new) connection.
        exchange.forward(self.upstream)

    def malformed_request(self, status: int) -> None:
        self.stats.reject(contract.REASON_BAD_REQUEST)
        self.stats.count_response(status)

    def h2c_connection(self, tunnel: H2cTunnel) -> None:
        # A frame relay cannot hold one stream back without stalling the connection; what it can do is tell
        # the client to open at most CONTAINER_CONCURRENCY streams at once (SETTINGS_MAX_CONCURRENT_STREAMS),
        # so the client queues the rest itself, and refuse (RST_STREAM REFUSED_STREAM) any stream beyond, so
        # a client that ignores the limit gets no more through. Per connection (see README).
        tunnel.forward(self.upstream, max_streams=self.config.container_concurrency)

    def stream_opened(self, stream: H2Stream) -> None:
        connection = stream.connection
        proxied = connection is not None and (connection.client_settings or b"").startswith(_PROXIED_SETTING)
        stream.tag = proxied
        self.stats.started(stream.started_at, proxied)
        self._watched_streams[stream] = None

    def stream_closed(self, stream: H2Stream) -> None:
        self._watched_streams.pop(stream, None)
        self.stats.finished(time.monotonic(), stream.started_at, stream.tag is True, stream_status(stream))

    # --- limiter and timeouts -----------------------------------------------------------------------

    def _admit(self, exchange: Exchange) -> None:
        exchange.forward(self.upstream)

    @property
    def queue_depth(self) -> int:
        return len(self.limiter.waiting) if self.limiter is not None else 0

    def expire(self, now: float) -> None:
        """504 every request older than the revision timeout whose response has not started.

        A request whose response has started is no longer watched: a streaming response or a WebSocket
        may run as long as the client and the app want (Knative's idle timeout of 0).
        """
        cutoff = now - self.config.revision_timeout_s
        watched = self._watched
        expired: list[Exchange] = []
        for exchange in watched:
            if exchange.started_at > cutoff:
                break
            expired.append(exchange)
        for exchange in expired:
            if exchange.response_started:
                watched.pop(exchange, None)
                continue
            self.stats.reject(contract.REASON_TIMEOUT)
            exchange.failure = contract.REASON_TIMEOUT
            where = "waiting for a slot" if self.limiter is not None and not exchange.slot_held else "at the app"
            exchange.respond(
                504,
                b"kapa queue-proxy: no response within REVISION_TIMEOUT_SECONDS=%g s (%s)\n"
                % (self.config.revision_timeout_s, where.encode()),
            )

        self._expire_streams(cutoff)

    def _expire_streams(self, cutoff: float) -> None:
        """Cancel (RST_STREAM CANCEL both ways, recorded as 504) every h2c stream older than the timeout
        whose response has not started; a stream that has answered may stream on (as for HTTP/1), and
        stops counting once the app has ended its response, whether or not the client has ended its side
        (see kapa.relay.h2c)."""
        watched = self._watched_streams
        expired: list[H2Stream] = []
        for stream in watched:
            if stream.started_at > cutoff:
                break
            expired.append(stream)
        for stream in expired:
            watched.pop(stream, None)
            if not stream.responded:
                self.stats.reject(contract.REASON_TIMEOUT)
                stream.cancel(504)

    async def expire_forever(self) -> None:
        """Check timeouts at a tenth of the timeout (at most every second, at least every 10 ms)."""
        interval = min(1.0, max(0.01, self.config.revision_timeout_s / 10))
        while True:
            await asyncio.sleep(interval)
            self.expire(time.monotonic())
