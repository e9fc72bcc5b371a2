"""Runs one fuzz input through the real relay, in-process, and checks the relay's promises after it.

An input is three behaviour bytes (see `Behaviour`: what the handler, the apps and the client do) and the
client's bytes, cut into the reads the relay gets at each `CUT_MARK`. The relay is the real `RelayServer`
on uvloop; the client and the apps are connected to it by socketpairs (see `tests.fuzz.apps`), so an input
costs about a millisecond. Each chunk is written, then the loop runs until nothing moves (`settle`), so
every chunk is one read of its own, as the fuzzer chose.

`Harness.run` raises `InvariantViolation` unless:

- in flight returns to 0: every exchange handed to the handler is finished exactly once, every h2c stream
  announced is closed exactly once, and the relay forgets the connection, however the client ends;
- nothing reaches an app uncounted: after every chunk, what the apps are serving is what the handler counts
  in flight (`_Run._check_counted`); at the end, every request head the HTTP/1 app parsed is one the handler
  forwarded (the same method and target, as many times), no more request heads began there than were
  forwarded, the app could parse all it got, and every stream the h2c app received was announced to the
  handler (or reset by the client in the same read: such a stream never reaches the handler, by design);
- memory stays bounded: after every chunk, the bytes the relay holds (its buffers, and what its transports
  have yet to write) stay under `RETAINED_BASE_BYTES` plus `RETAINED_PER_INPUT_BYTE` per byte sent, with at
  most MAX_PIPELINED + 2 exchanges alive; the input's tracemalloc peak stays under `PEAK_BASE_BYTES` plus
  `PEAK_PER_INPUT_BYTE` per byte sent; no task, app connection or relay connection outlives the input;
- nothing goes unhandled: no exception out of the relay or into the event loop's handler, no relay error
  logged, and a client that half-closes has its connection closed by the relay once it is answered.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import socket
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kapa.relay import ClientTimeouts, Exchange, H2cTunnel, H2Stream, RelayServer, UpstreamPool
from kapa.relay.h2c import PREFACE
from kapa.relay.http1 import MAX_PIPELINED
from tests.fuzz.apps import H2C_APP, HTTP1_APP, AppLoop, AppRecord, H2cApp, Http1App, Http1AppBehaviour

#: Splits the client's bytes of an input into reads.
CUT_MARK = b"|cut|"
#: Leading bytes of an input that select its `Behaviour`.
BEHAVIOUR_BYTES = 3
#: The fuzzers, by name (also their corpus directories), and what each puts before an input's first chunk:
#: the h2c fuzzer's inputs are frames only, so no mutation is spent rediscovering the connection preface.
TARGETS = {"http1": b"", "h2c": PREFACE}

RETAINED_BASE_BYTES = 64 * 1024
RETAINED_PER_INPUT_BYTE = 8
PEAK_BASE_BYTES = 2 * 1024 * 1024
PEAK_PER_INPUT_BYTE = 64

#: Timeouts no input reaches by itself (the harness moves the clock instead: `Behaviour.time_passes`), so
#: that an input behaves the same on a busy machine.
_TIMEOUTS = ClientTimeouts(header_read_s=3600.0, idle_s=3600.0)
#: Steps of the event loop with no event anywhere after which it is taken to be quiet.
_QUIET_STEPS = 4
_MAX_SETTLE_STEPS = 2000
#: Rounds of `_Run._until` before an input that keeps the loop busy is taken to be stuck.
_MAX_ROUNDS = 200
#: The setting H2cMode.LIMIT_2_MARKED puts first in the client's SETTINGS: an identifier no peer knows, so
#: the app ignores it (RFC 9113 6.5.2), as it does the activator's mark.
_MARK_SETTING = (0xF0F0, 1)
#: The h2c handler's read and hold bounds (a real handler's would be smaller; none is reached here).
_H2C_READ_S = 3600.0
_H2C_MAX_BYTES = 256 * 1024


class InvariantViolation(AssertionError):
    """An input broke one of the promises in the module docstring; the message says which and how."""


class Policy(enum.IntEnum):
    """What the handler does with each HTTP/1 request."""

    FORWARD = 0
    #: `hold_body`, forwarded once the next chunk has been read (a request the activator holds).
    HOLD_BODY = 1
    #: Kept without `hold_body` (its body is buffered by the relay) until the next chunk has been read.
    QUEUE = 2
    #: Every other request is answered by the handler itself (503), the others forwarded.
    ANSWER_SOME = 3


class ClientEnd(enum.IntEnum):
    """What the client does after its last chunk."""

    CLOSE = 0
    #: Shut down its sending side and wait for the relay to answer and close.
    HALF_CLOSE = 1
    #: Drop the connection at once, unread bytes and all.
    RESET = 2
    #: Close right after writing the last chunk, before the relay has read it.
    CLOSE_AT_ONCE = 3


class H2cMode(enum.IntEnum):
    """What the handler does with an h2c connection."""

    FORWARD = 0
    LIMIT_1 = 1
    #: At most two streams, and a setting of the handler's own put first in the client's first SETTINGS.
    LIMIT_2_MARKED = 2
    #: `read_request`, then `hold` until the next chunk has been read, then `forward_now` (the activator).
    READ_HOLD_FORWARD = 3


@dataclass(frozen=True)
class Behaviour:
    """The three leading bytes of an input. Byte 0: handler policy (bits 0-1), set a request header (2), time
    passes between chunks (3), client end (4-5), cancel h2c streams (6), the h2c app answers at once (7).
    Byte 1: the HTTP/1 app declines upgrades (0), closes after each response (1), answers chunked (2),
    sends an interim 103 first (3), drops every other request unanswered (4), refuses every third
    connection (5); h2c mode (6-7). Byte 2: the relay shuts down before the last chunk (0), the HTTP/1 app
    answers every third request with a malformed response (1), delimits its responses by closing (2)."""

    policy: Policy = Policy.FORWARD
    set_header: bool = False
    #: After each chunk the relay's sweep runs twice, each time hours later: every timeout that can fire does.
    time_passes: bool = False
    client_end: ClientEnd = ClientEnd.CLOSE
    #: Each h2c stream still open when a chunk has been read is cancelled by the handler (`H2Stream.cancel`).
    cancel_streams: bool = False
    h2c_app_answers_at_once: bool = False
    app: Http1AppBehaviour = Http1AppBehaviour()
    app_refuses_some: bool = False
    h2c_mode: H2cMode = H2cMode.FORWARD
    #: The relay stops taking requests (`close_idle`, the proxies' drain on SIGTERM) before the last chunk.
    shutdown: bool = False

    @classmethod
    def decode(cls, head: bytes) -> Behaviour:
        first, second, third = (head + bytes(BEHAVIOUR_BYTES))[:BEHAVIOUR_BYTES]
        return cls(
            policy=Policy(first & 3),
            set_header=bool(first & 4),
            time_passes=bool(first & 8),
            client_end=ClientEnd(first >> 4 & 3),
            cancel_streams=bool(first & 64),
            h2c_app_answers_at_once=bool(first & 128),
            app=Http1AppBehaviour(
                declines_upgrades=bool(second & 1),
                closes_after_response=bool(second & 2),
                chunked_response=bool(second & 4),
                interim_response=bool(second & 8),
                drops_some=bool(second & 16),
                malformed_some=bool(third & 2),
                close_delimited=bool(third & 4),
            ),
            app_refuses_some=bool(second & 32),
            h2c_mode=H2cMode(second >> 6 & 3),
            shutdown=bool(third & 1),
        )

    def encode(self) -> bytes:
        app = self.app
        first = (
            self.policy | self.set_header << 2 | self.time_passes << 3 | self.client_end << 4
            | self.cancel_streams << 6 | self.h2c_app_answers_at_once << 7
        )
        second = (
            app.declines_upgrades | app.closes_after_response << 1 | app.chunked_response << 2
            | app.interim_response << 3 | app.drops_some << 4 | self.app_refuses_some << 5 | self.h2c_mode << 6
        )
        third = self.shutdown | app.malformed_some << 1 | app.close_delimited << 2
        return bytes((first, second, third))


@dataclass(frozen=True)
class FuzzCase:
    behaviour: Behaviour
    #: The client's reads, in order (empty chunks are dropped: they would be no read at all).
    chunks: tuple[bytes, ...]

    @classmethod
    def decode(cls, data: bytes, prefix: bytes = b"") -> FuzzCase:
        """The case an input stands for; `prefix` goes before the client's first chunk (the h2c fuzzer's
        preface, which mutations need not rediscover)."""
        chunks = [chunk for chunk in data[BEHAVIOUR_BYTES:].split(CUT_MARK) if chunk]
        if prefix:
            chunks[:1] = [prefix + (chunks[0] if chunks else b"")]
        return cls(Behaviour.decode(data[:BEHAVIOUR_BYTES]), tuple(chunks))


def encode(behaviour: Behaviour, *chunks: bytes) -> bytes:
    """The input for `behaviour` and the client's `chunks` (the seeds are written with it)."""
    return behaviour.encode() + CUT_MARK.join(chunks)


class Accounting:
    """The relay `Handler` of the harness: forwards to the apps per `Behaviour`, and keeps the books the
    invariants are checked against."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        #: Exchanges handed over and not yet finished, by id (the exchange is kept so its id is not reused).
        self.open_exchanges: dict[int, Exchange] = {}
        self.open_streams: dict[int, H2Stream] = {}
        #: Stream ids announced by `stream_opened` (one client connection per input: ids are unique).
        self.announced: set[int] = set()
        #: (method, target) of each request sent to the HTTP/1 app, once per `forward`.
        self.forwarded: Counter[tuple[bytes, bytes]] = Counter()
        self.requests = 0
        self.malformed: list[int] = []
        self.violations: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.activity = 0
        self._held: list[Exchange] = []
        self._to_cancel: list[H2Stream] = []
        self._release = asyncio.Event()

    # --- relay Handler ----------------------------------------------------------------------------

    def request_received(self, exchange: Exchange) -> None:
        self.activity += 1
        if id(exchange) in self.open_exchanges:
            self.violations.append(f"request_received twice for {exchange.method!r} {exchange.url!r}")
        self.open_exchanges[id(exchange)] = exchange
        self.requests += 1
        if self.behaviour.set_header:
            exchange.set_request_header(b"X-Fuzz", b"1")
        policy = self.behaviour.policy
        if policy == Policy.ANSWER_SOME and self.requests % 2:
            exchange.respond(503, b"answered by the handler\n")
        elif policy in (Policy.HOLD_BODY, Policy.QUEUE):
            if policy == Policy.HOLD_BODY:
                exchange.hold_body()
            self._held.append(exchange)
        else:
            self._forward(exchange)

    def request_finished(self, exchange: Exchange) -> None:
        self.activity += 1
        if self.open_exchanges.pop(id(exchange), None) is None:
            self.violations.append(
                f"request_finished for an exchange not open ({exchange.method!r} {exchange.url!r}): "
                "finished twice, or never handed to the handler"
            )

    def request_undelivered(self, exchange: Exchange) -> None:
        self.activity += 1
        self._forward(exchange)

    def malformed_request(self, status: int) -> None:
        self.activity += 1
        self.malformed.append(status)

    def h2c_connection(self, tunnel: H2cTunnel) -> None:
        self.activity += 1
        mode = self.behaviour.h2c_mode
        if mode == H2cMode.FORWARD:
            tunnel.forward(H2C_APP)
        elif mode == H2cMode.LIMIT_1:
            tunnel.forward(H2C_APP, max_streams=1)
        elif mode == H2cMode.LIMIT_2_MARKED:
            tunnel.forward(H2C_APP, max_streams=2, add_setting=_MARK_SETTING)
        else:
            task = asyncio.get_running_loop().create_task(self._read_hold_forward(tunnel))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def stream_opened(self, stream: H2Stream) -> None:
        self.activity += 1
        if id(stream) in self.open_streams:
            self.violations.append(f"stream_opened twice for stream {stream.stream_id}")
        self.open_streams[id(stream)] = stream
        self.announced.add(stream.stream_id)
        if self.behaviour.cancel_streams:
            self._to_cancel.append(stream)

    def stream_closed(self, stream: H2Stream) -> None:
        self.activity += 1
        if self.open_streams.pop(id(stream), None) is None:
            self.violations.append(
                f"stream_closed for stream {stream.stream_id}, not open: closed twice, or never announced"
            )

    # --- driven by the harness --------------------------------------------------------------------

    def chunk_read(self) -> None:
        """A chunk has been read: forward what was held, cancel the streams marked, release the h2c hold."""
        held, self._held = self._held, []
        for exchange in held:
            self._forward(exchange)
        to_cancel, self._to_cancel = self._to_cancel, []
        for stream in to_cancel:
            if id(stream) in self.open_streams:
                stream.cancel(504)
        self._release.set()

    def request_lines(self) -> list[bytes]:
        """The request line of each exchange in flight, as the relay sends it upstream (for reports)."""
        return [exchange.head.partition(b"\r\n")[0] for exchange in self.open_exchanges.values()]

    @property
    def in_flight(self) -> int:
        return len(self.open_exchanges) + len(self.open_streams)

    def _forward(self, exchange: Exchange) -> None:
        if exchange.done:
            return
        self.forwarded[(exchange.method, exchange.url)] += 1
        exchange.forward(HTTP1_APP)

    async def _read_hold_forward(self, tunnel: H2cTunnel) -> None:
        if await tunnel.read_request(_H2C_READ_S, _H2C_MAX_BYTES) is None:
            tunnel.close()
            return
        if await tunnel.hold(self._release.wait(), _H2C_MAX_BYTES) is None:
            tunnel.close()
            return
        if not await tunnel.forward_now(H2C_APP):
            tunnel.close()


class _Client(asyncio.Protocol):
    """The client's side: keeps what the relay sends, and notes when the relay has ended the connection."""

    def __init__(self) -> None:
        self.received = bytearray()
        #: The relay closed the connection (or shut down its side).
        self.ended = False
        self.activity = 0

    def data_received(self, data: bytes) -> None:
        self.activity += 1
        self.received += data

    def eof_received(self) -> bool:
        self.activity += 1
        self.ended = True
        return True  # a half-closing client may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.activity += 1
        self.ended = True


@dataclass
class Outcome:
    """What one input did, for a test to look at beyond the invariants (that it reached what it meant to)."""

    case: FuzzCase
    #: What the client received.
    responses: bytes = b""
    #: Requests handed to the handler, and the statuses of those refused before (`malformed_request`).
    requests: int = 0
    malformed: list[int] = field(default_factory=list)
    app: AppRecord = field(default_factory=AppRecord)
    violations: list[str] = field(default_factory=list)


_CONTAINERS = (list, tuple, dict, set, frozenset, deque)


def retained_bytes(relay: RelayServer) -> tuple[int, int]:
    """(bytes, exchanges) the relay holds: the bytes objects reachable from it through the relay's own
    objects and plain containers, plus what its transports have yet to write; and the `Exchange` objects
    among them. Walking the objects, not naming fields, keeps the bound honest as the relay's code changes."""
    seen: set[int] = set()
    stack: list[object] = [relay]
    total = exchanges = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (bytes, bytearray)):
            total += len(obj)
        elif isinstance(obj, memoryview):
            total += obj.nbytes
        elif isinstance(obj, _CONTAINERS) or type(obj).__module__.startswith("kapa.relay"):
            exchanges += isinstance(obj, Exchange)
            stack.extend(gc.get_referents(obj))
        elif hasattr(obj, "get_write_buffer_size") and not obj.is_closing():  # type: ignore[attr-defined]
            total += obj.get_write_buffer_size()  # type: ignore[attr-defined]
    return total, exchanges


class Harness:
    """Owns an event loop and runs inputs on it, one at a time; see the module docstring."""

    def __init__(self, trace_memory: bool = True) -> None:
        self.loop = AppLoop()
        self.loop.set_exception_handler(self._unhandled)
        self._unhandled_errors: list[str] = []
        self._error_recorder = _ErrorRecorder(self._unhandled_errors)
        relay_log = logging.getLogger("kapa.relay")
        relay_log.addHandler(self._error_recorder)
        relay_log.propagate = False  # warnings (a rapid reset sent away) are expected, and not worth a line each
        self.trace_memory = trace_memory
        #: This harness started tracemalloc, and so stops it: it slows all Python code down.
        self._started_tracemalloc = trace_memory and not tracemalloc.is_tracing()
        if self._started_tracemalloc:
            tracemalloc.start()

    def run(self, data: bytes, target: str) -> Outcome:
        """Run the input `data` of fuzzer `target` (a key of TARGETS); raises InvariantViolation if the relay
        broke a promise, and lets any other exception out (the relay raised it: no less a violation)."""
        case = FuzzCase.decode(data, TARGETS[target])
        self._unhandled_errors.clear()
        if self.trace_memory:
            tracemalloc.reset_peak()
        memory_at_start = tracemalloc.get_traced_memory()[0]
        run = _Run(case, self.loop)
        self.loop.run_until_complete(run.run())
        outcome = run.outcome
        outcome.violations.extend(f"unhandled: {error}" for error in self._unhandled_errors)
        if self.trace_memory:
            peak = tracemalloc.get_traced_memory()[1] - memory_at_start
            if peak > PEAK_BASE_BYTES + PEAK_PER_INPUT_BYTE * run.sent:
                outcome.violations.append(f"tracemalloc peak {peak} bytes for {run.sent} bytes sent")
        if outcome.violations:
            raise InvariantViolation(_describe(outcome))
        return outcome

    def close(self) -> None:
        """Close the loop and undo what the harness changed in the process (tests run after it)."""
        self.loop.close()
        relay_log = logging.getLogger("kapa.relay")
        relay_log.removeHandler(self._error_recorder)
        relay_log.propagate = True
        if self._started_tracemalloc:
            tracemalloc.stop()

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        self._unhandled_errors.append(f"{context.get('message')}: {context.get('exception')!r}")


class _Run:
    """One input on the harness's loop: the relay, the handler, the apps and the client it starts with."""

    def __init__(self, case: FuzzCase, loop: AppLoop) -> None:
        self.case = case
        self.loop = loop
        behaviour = case.behaviour
        self.record = record = AppRecord()
        def h2c_app() -> H2cApp:
            return H2cApp(record, behaviour.h2c_app_answers_at_once)

        loop.serve(
            {HTTP1_APP: lambda: Http1App(record, behaviour.app, h2c_app), H2C_APP: h2c_app},
            refuse_every=3 if behaviour.app_refuses_some else 0,
        )
        self.accounting = Accounting(behaviour)
        self.relay = RelayServer(self.accounting, UpstreamPool(), _TIMEOUTS)
        self.client = _Client()
        self.outcome = Outcome(case, malformed=self.accounting.malformed, app=record)
        #: Client bytes written so far.
        self.sent = 0
        #: How far the harness has moved the relay's clock (`Behaviour.time_passes`).
        self.clock_offset = 0.0

    async def run(self) -> None:
        """Connect, send, end as the behaviour says, wait for the relay to let go, and check. Whatever
        happens, everything of this input is closed before the next one (a crash must not leak into it)."""
        relay_side, client_side = socket.socketpair()
        await self.loop.connect_accepted_socket(self.relay.protocol, sock=relay_side)
        transport, _ = await self.loop.create_connection(lambda: self.client, sock=client_side)
        try:
            await self._send(transport)
            await self._end(transport)
            await self._drain()
        finally:
            await self._close(transport)
        outcome, accounting = self.outcome, self.accounting
        outcome.violations.extend(accounting.violations)
        outcome.violations.extend(_uncounted(accounting, self.record))
        outcome.responses = bytes(self.client.received)
        outcome.requests = accounting.requests

    def activity(self) -> int:
        return self.record.activity + self.accounting.activity + self.client.activity

    async def _send(self, transport: asyncio.Transport) -> None:
        behaviour, client, relay = self.case.behaviour, self.client, self.relay
        chunks = self.case.chunks
        for index, chunk in enumerate(chunks):
            if client.ended:
                return
            if behaviour.shutdown and index == len(chunks) - 1:
                relay.close_idle()
            transport.write(chunk)
            self.sent += len(chunk)
            if index == len(chunks) - 1 and behaviour.client_end in (ClientEnd.RESET, ClientEnd.CLOSE_AT_ONCE):
                return
            await settle(self.activity)
            self._check_memory(index)  # what the chunk left held, before the handler lets anything go
            self.accounting.chunk_read()
            if behaviour.time_passes:
                for _ in range(2):  # the first sweep marks each connection's state, the second expires it
                    self.clock_offset += 2 * _TIMEOUTS.idle_s
                    relay.sweep(time.monotonic() + self.clock_offset)
            await settle(self.activity)
            self._check_counted(index)

    def _check_counted(self, index: int) -> None:
        """What the apps are serving now is what the handler counts in flight: the load the autoscaler sees,
        neither less (load nobody limits or sees) nor more (phantom load, scaled up for). Checked when all
        is quiet, so every byte sent has arrived. HTTP/1 requests the handler holds, and upgraded exchanges
        (a pipe counts for its lifetime, while the app has long answered its 101), are the handler's own
        books and not compared."""
        record, accounting, violations = self.record, self.accounting, self.outcome.violations
        forwarded = sum(
            1 for exchange in accounting.open_exchanges.values()
            if exchange.address is not None and not exchange.upgraded
        )
        if record.requests_at_app != forwarded:
            violations.append(
                f"after chunk {index} the HTTP/1 app serves {record.requests_at_app} requests, the handler "
                f"counts {forwarded} forwarded and in flight: {accounting.request_lines()}"
            )
        counted = {stream.stream_id for stream in accounting.open_streams.values()}
        if record.streams_at_app - counted:
            violations.append(
                f"after chunk {index} the h2c app serves streams not counted in flight: "
                f"{sorted(record.streams_at_app - counted)}"
            )
        if counted - record.streams_at_app:
            violations.append(
                f"after chunk {index} streams counted in flight that the h2c app is not serving: "
                f"{sorted(counted - record.streams_at_app)}"
                + (" (the app had closed its connection)" if record.h2c_app_closed else "")
            )

    def _check_memory(self, index: int) -> None:
        retained, exchanges = retained_bytes(self.relay)
        violations = self.outcome.violations
        if retained > RETAINED_BASE_BYTES + RETAINED_PER_INPUT_BYTE * self.sent:
            violations.append(f"the relay holds {retained} bytes after chunk {index} ({self.sent} bytes sent)")
        if exchanges > MAX_PIPELINED + 2:
            violations.append(f"{exchanges} exchanges alive after chunk {index} (MAX_PIPELINED: {MAX_PIPELINED})")

    async def _end(self, transport: asyncio.Transport) -> None:
        end, client = self.case.behaviour.client_end, self.client
        if end == ClientEnd.RESET:
            transport.abort()
            return
        if end == ClientEnd.HALF_CLOSE and not client.ended:
            transport.write_eof()
            if not await self._until(lambda: client.ended):
                self.outcome.violations.append("the client half-closed, and the relay stopped short of closing")
        transport.close()

    async def _drain(self) -> None:
        """Wait until the relay has finished every request and forgotten the connection."""
        accounting, relay = self.accounting, self.relay
        if not await self._until(lambda: not (accounting.in_flight or relay.connections or accounting.tasks)):
            self.outcome.violations.append(
                f"stuck after the client left: {len(accounting.open_exchanges)} exchanges "
                f"{accounting.request_lines()} and {len(accounting.open_streams)} streams in flight, relay "
                f"connections {relay.connections}, handler tasks {len(accounting.tasks)}"
            )

    async def _until(self, condition: Callable[[], bool]) -> bool:
        """Run the loop, and the relay's sweep (which notices clients gone while unread), until `condition()`
        holds: False once a whole round changes nothing, for nothing will then (no timeout is near, and the
        sockets are in-process). Quiet, not a clock, so a busy machine cannot fail an input."""
        last = None
        for _ in range(_MAX_ROUNDS):
            if condition():
                return True
            await settle(self.activity)
            self.relay.sweep(time.monotonic() + self.clock_offset)
            await settle(self.activity)
            now = (self.activity(), self.accounting.in_flight, len(self.relay.connections))
            if now == last:
                return condition()
            last = now
        return condition()

    async def _close(self, transport: asyncio.Transport) -> None:
        """Close all there is, and report what had to be closed here that the relay should have."""
        try:
            self.relay.close_all()
        finally:  # even if the relay raised: the next input starts clean
            transport.abort()
            await settle(self.activity)
            self._check_closed()

    def _check_closed(self) -> None:
        violations = self.outcome.violations
        if self.record.open_connections:
            violations.append(f"{self.record.open_connections} app connections still open after close_all")
        current = asyncio.current_task(self.loop)
        left = [task for task in asyncio.all_tasks(self.loop) if task is not current]
        if left:
            violations.append(f"tasks left behind: {left}")
            for task in left:
                task.cancel()


def _uncounted(accounting: Accounting, record: AppRecord) -> list[str]:
    """What reached the apps that the handler did not count (see the module docstring)."""
    found = []
    extra = Counter(record.requests) - accounting.forwarded
    if extra:
        found.append(f"the HTTP/1 app parsed requests never forwarded: {sorted(extra.elements())}")
    forwards = sum(accounting.forwarded.values())
    if record.requests_begun > forwards:
        found.append(f"the HTTP/1 app began {record.requests_begun} requests, {forwards} were forwarded")
    for error, received in record.malformed:
        found.append(f"the HTTP/1 app could not parse what the relay sent ({error}): {received[:2000]!r}")
    unannounced = set(record.streams) - accounting.announced - record.streams_reset
    if unannounced:
        found.append(f"the h2c app received streams never announced: {sorted(unannounced)}")
    return found


async def settle(activity: Callable[[], int]) -> None:
    """Run the loop until `activity()` has stood still for a few steps: the relay, the apps and the client
    have done all the bytes in flight let them do (each step polls the sockets once)."""
    last, quiet = activity(), 0
    for _ in range(_MAX_SETTLE_STEPS):
        await asyncio.sleep(0)
        now = activity()
        if now != last:
            last, quiet = now, 0
        else:
            quiet += 1
            if quiet >= _QUIET_STEPS:
                return


def _describe(outcome: Outcome) -> str:
    case = outcome.case
    lines = [*outcome.violations, f"behaviour: {case.behaviour}"]
    lines.extend(f"chunk {index}: {chunk[:500]!r}" for index, chunk in enumerate(case.chunks))
    lines.append(f"the client received: {outcome.responses[:2000]!r}")
    return "\n".join(lines)


class _ErrorRecorder(logging.Handler):
    """Takes the relay's error log lines (a bug it caught and answered 500 for) as unhandled errors."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        self.errors.append(f"relay logged: {record.getMessage()} {getattr(record, 'kapa_fields', '')}")

