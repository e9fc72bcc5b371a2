"""Where the queue-proxy's handler counts: each exchange and h2c stream enters RequestStats when it reaches
the handler and leaves it when the relay reports it finished, with the status the client got.

The handler runs here without sockets: exchanges and streams are stand-ins that record what the handler
asked of them, and the clock is explicit, so every integral below is computed by hand. The end-to-end
tests (test_metrics.py, test_limit.py) check the same counts through a real proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

import pytest

from kapa.core import contract
from kapa.relay import FAILURE_BAD_REQUEST, FAILURE_CLIENT_GONE, FAILURE_UPSTREAM, Address, Exchange, H2Stream
from queue_proxy import handler as handler_module
from queue_proxy.config import Config, ProbeConfig
from queue_proxy.handler import QueueProxyHandler
from queue_proxy.readiness import Readiness
from queue_proxy.stats import RequestStats, Snapshot

APP = ("127.0.0.1", 8080)
PLAIN = b"get / http/1.1\r\nhost: app\r\n\r\n"
PROXIED = f"get / http/1.1\r\nhost: app\r\n{contract.PROXY_HEADER}: {contract.PROXY_HEADER_VALUE}\r\n\r\n".lower().encode()
PROBE = f"get / http/1.1\r\nhost: app\r\n{contract.PROBE_HEADER}: {contract.PROBE_HEADER_VALUE}\r\n\r\n".lower().encode()
#: What the activator puts first in an h2c connection's SETTINGS: its marker setting, value 1.
PROXIED_SETTINGS = contract.H2C_PROXY_SETTING.to_bytes(2, "big") + (1).to_bytes(4, "big")
NO_CLASSES = dict.fromkeys(contract.CODE_CLASSES, 0)


@dataclass(eq=False)
class _Exchange:
    """The parts of a relay Exchange the handler touches; records where it was sent and what it was told."""

    head_lower: bytes
    started_at: float
    tag: object = None
    slot_held: bool = False
    done: bool = False
    failure: str | None = None
    status: int = 0
    response_started: bool = False
    forwarded_to: Address | None = None
    response: tuple[int, bytes] | None = None

    def forward(self, address: Address) -> None:
        self.forwarded_to = address

    def respond(self, status: int, body: bytes) -> None:
        self.response = (status, body)
        self.status = status


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Clock]:
    """The handler's `time.monotonic()` (when an exchange finishes), set by the test."""
    fake = _Clock()
    monkeypatch.setattr(handler_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    yield fake


def _handler(container_concurrency: int = 0, ready: bool = True) -> tuple[QueueProxyHandler, RequestStats]:
    config = Config(
        serving_port=8012, user_port=APP[1], container_concurrency=container_concurrency, revision_timeout_s=300.0,
        namespace="tests", service="app", readiness_probe=ProbeConfig("tcp", APP[0], APP[1]), metrics_port=9091,
        admin_port=8022, drain_s=0.0, bind_address="127.0.0.1", upstream_host=APP[0],
    )
    readiness = Readiness()
    readiness.app_ready = ready
    stats = RequestStats(now=0.0)
    return QueueProxyHandler(config, stats, readiness), stats


def _arrive(handler: QueueProxyHandler, head: bytes, at: float) -> _Exchange:
    exchange = _Exchange(head, at)
    handler.request_received(cast(Exchange, exchange))
    return exchange


def _finish(handler: QueueProxyHandler, clock: _Clock, exchange: _Exchange, at: float, status: int,
            failure: str | None = None) -> None:
    clock.now = at
    exchange.status, exchange.failure, exchange.done = status, failure, True
    handler.request_finished(cast(Exchange, exchange))


def _classes(counts: dict[str, int]) -> dict[str, int]:
    return {**NO_CLASSES, **counts}


@pytest.mark.parametrize("ready", [True, False])
def test_a_probe_is_answered_by_the_proxy_and_never_counted(clock: _Clock, ready: bool) -> None:
    handler, stats = _handler(container_concurrency=1, ready=ready)
    holder = _arrive(handler, PLAIN, 1.0)  # holds the only slot
    probe = _arrive(handler, PROBE, 2.0)
    assert probe.response == ((200, b"queue\n") if ready else (503, b"not ready\n"))
    assert probe.forwarded_to is None and probe.tag is None
    _finish(handler, clock, probe, 3.0, probe.status)
    snapshot = stats.snapshot(4.0)
    # Only the holder was ever in flight (1 s to 4 s), and its slot is still its own.
    assert (snapshot.in_flight, snapshot.concurrency_seconds, snapshot.requests_by_class) == (1, 3.0, NO_CLASSES)
    assert handler.limiter is not None and handler.limiter.in_use == 1 and holder.slot_held


# Each exchange: (head, arrives at, finishes at, status, failure). Hand-computed at a scrape at 10 s:
# the integral of the in-flight count, and of the proxied part of it.
EXCHANGES = [
    pytest.param(
        [(PLAIN, 1.0, 3.0, 200, None)], 2.0, 0.0, _classes({"2xx": 1}), 0, {}, id="one-request-2s",
    ),
    pytest.param(
        [(PROXIED, 1.0, 4.0, 200, None), (PLAIN, 2.0, 3.0, 503, None)],
        4.0, 3.0, _classes({"2xx": 1, "5xx": 1}), 1, {}, id="proxied-and-plain-overlap",
    ),
    pytest.param(
        [(PLAIN, 0.0, 1.0, 502, FAILURE_UPSTREAM), (PLAIN, 0.0, 2.0, 400, FAILURE_BAD_REQUEST)],
        3.0, 0.0, _classes({"4xx": 1, "5xx": 1}), 0,
        {contract.REASON_UPSTREAM_ERROR: 1, contract.REASON_BAD_REQUEST: 1}, id="relay-failures-are-rejections",
    ),
    pytest.param(
        [(PROXIED, 5.0, 5.5, 499, FAILURE_CLIENT_GONE)], 0.5, 0.5, _classes({"4xx": 1}), 1, {},
        id="client-gone-is-no-rejection",
    ),
]


@pytest.mark.parametrize(("exchanges", "integral", "proxied_integral", "classes", "proxied", "rejected"), EXCHANGES)
def test_each_exchange_counts_from_arrival_until_the_relay_finishes_it(
    clock: _Clock,
    exchanges: list[tuple[bytes, float, float, int, str | None]],
    integral: float,
    proxied_integral: float,
    classes: dict[str, int],
    proxied: int,
    rejected: dict[str, int],
) -> None:
    handler, stats = _handler()
    arrived = [(_arrive(handler, head, start), end, status, failure) for head, start, end, status, failure in exchanges]
    assert all(exchange.forwarded_to == APP for exchange, *_ in arrived)
    assert stats.in_flight == len(exchanges)
    assert stats.proxied_in_flight == sum(head == PROXIED for head, *_ in exchanges)
    for exchange, end, status, failure in sorted(arrived, key=lambda item: item[1]):
        _finish(handler, clock, exchange, end, status, failure)
    snapshot = stats.snapshot(10.0)
    assert (snapshot.in_flight, snapshot.proxied_in_flight) == (0, 0)
    assert snapshot.concurrency_seconds == pytest.approx(integral)
    assert snapshot.proxied_concurrency_seconds == pytest.approx(proxied_integral)
    assert (snapshot.requests_by_class, snapshot.proxied_requests, snapshot.rejected_by_reason) == (
        classes, proxied, rejected
    )
    # A finished exchange is no longer watched for the revision timeout.
    handler.expire(1000.0)
    assert stats.rejected.get(contract.REASON_TIMEOUT, 0) == 0


def test_the_limit_queues_counts_and_refuses_then_hands_slots_on(clock: _Clock) -> None:
    handler, stats = _handler(container_concurrency=1)
    first = _arrive(handler, PLAIN, 0.0)
    queued = [_arrive(handler, PLAIN, 1.0) for _ in range(contract.QUEUE_DEPTH_PER_SLOT)]
    refused = _arrive(handler, PLAIN, 2.0)
    assert first.forwarded_to == APP and all(exchange.forwarded_to is None for exchange in queued)
    assert (stats.queued, handler.queue_depth) == (10, 10)
    assert refused.response == (
        503,
        b"kapa queue-proxy: overloaded: 1 requests at the app (CONTAINER_CONCURRENCY) and 10 waiting, "
        b"the queue is full; retry later\n",
    )
    assert stats.rejected == {contract.REASON_QUEUE_FULL: 1}
    # A refused request is still a request: in flight until the relay finishes it, with the 503.
    assert stats.in_flight == 12
    _finish(handler, clock, refused, 2.0, 503)
    _finish(handler, clock, first, 3.0, 200)
    assert queued[0].forwarded_to == APP and queued[0].slot_held and handler.queue_depth == 9
    snapshot = stats.snapshot(3.0)
    # 1 in flight over 0..1 s, 11 over 1..2 s, 11 again over 2..3 s (the refused one finished at 2 s).
    assert snapshot.concurrency_seconds == pytest.approx(1.0 + 11.0 + 11.0)
    assert (snapshot.in_flight, snapshot.requests_by_class) == (10, _classes({"2xx": 1, "5xx": 1}))


def test_a_malformed_request_is_a_rejection_and_a_response_but_never_in_flight() -> None:
    handler, stats = _handler()
    handler.malformed_request(431)
    handler.malformed_request(400)
    snapshot = stats.snapshot(1.0)
    assert snapshot.rejected_by_reason == {contract.REASON_BAD_REQUEST: 2}
    assert (snapshot.requests_by_class, snapshot.in_flight, snapshot.concurrency_seconds) == (_classes({"4xx": 2}), 0, 0.0)


@pytest.mark.parametrize(
    ("client_settings", "has_connection", "proxied"),
    [
        pytest.param(PROXIED_SETTINGS + b"\x00\x03\x00\x00\x00\x64", True, True, id="activator-marked"),
        pytest.param(b"\x00\x03\x00\x00\x00\x64" + PROXIED_SETTINGS, True, False, id="marker-not-first"),
        pytest.param(None, True, False, id="no-settings-yet"),
        pytest.param(None, False, False, id="no-connection"),
    ],
)
def test_an_h2c_stream_counts_while_at_the_app(
    clock: _Clock, client_settings: bytes | None, has_connection: bool, proxied: bool
) -> None:
    handler, stats = _handler()
    connection = SimpleNamespace(client_settings=client_settings) if has_connection else None
    stream = H2Stream(1, 2.0, connection)  # type: ignore[arg-type]
    handler.stream_opened(stream)
    assert stream.tag is proxied
    assert (stats.in_flight, stats.proxied_in_flight) == (1, int(proxied))
    clock.now = 5.0
    stream.reset_by = "client"  # the client gave up: recorded as 499
    handler.stream_closed(stream)
    snapshot: Snapshot = stats.snapshot(6.0)
    assert (snapshot.in_flight, snapshot.proxied_in_flight, snapshot.proxied_requests) == (0, 0, int(proxied))
    assert snapshot.concurrency_seconds == pytest.approx(3.0)
    assert snapshot.proxied_concurrency_seconds == pytest.approx(3.0 if proxied else 0.0)
    assert snapshot.requests_by_class == _classes({"4xx": 1})
    handler.expire(1000.0)  # closed: no longer watched for the timeout
    assert stats.rejected == {}


def test_an_answered_exchange_outlives_the_timeout_and_is_counted_when_it_ends(clock: _Clock) -> None:
    """The timeout stops watching an exchange whose response has started (a stream may run on); its end is
    still counted, once."""
    handler, stats = _handler()
    exchange = _arrive(handler, PLAIN, 0.0)
    exchange.response_started = True
    handler.expire(400.0)  # past the 300 s timeout
    assert exchange.response is None
    _finish(handler, clock, exchange, 500.0, 200)
    snapshot = stats.snapshot(500.0)
    assert (snapshot.requests_by_class, snapshot.rejected_by_reason, snapshot.in_flight) == (_classes({"2xx": 1}), {}, 0)


def test_an_answered_stream_outlives_the_timeout_and_is_counted_when_it_ends(clock: _Clock) -> None:
    handler, stats = _handler()
    stream = H2Stream(1, 0.0)
    handler.stream_opened(stream)
    stream.responded = True
    handler.expire(400.0)
    clock.now = 500.0
    handler.stream_closed(stream)
    snapshot = stats.snapshot(500.0)
    assert (snapshot.requests_by_class, snapshot.rejected_by_reason, snapshot.in_flight) == (_classes({"2xx": 1}), {}, 0)
