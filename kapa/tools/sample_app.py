"""The sample app: an HTTP server that sleeps, computes primes or holds memory on request.

It plays the part of Knative's autoscale sample, so the autoscaling scenarios read the same here:

    GET /?sleep=100           waits 100 ms without using CPU (concurrent requests wait concurrently)
    GET /?prime=10000000      finds the primes below 10,000,000 inline: real CPU work that blocks the loop
    GET /?bloat=50            allocates 50 MB, touches every page, releases it after the response
    GET /ready                200 once the server listens (the readiness path, --ready-path)

Parameters combine (memory is allocated first, then primes, then the sleep), and the body says what was
done, one line per parameter. A value that is not a whole number in range gets 400 naming the parameter.

It is also the upstream of the proxy benchmark, so the hot path is an asyncio protocol on uvloop with
httptools and a prebuilt response for a request without parameters: no framework, nothing per request
that is not needed. `--startup-delay` (or STARTUP_DELAY) holds the listening socket back, like an app that
loads for a while before it can serve, which is what the activator and readiness probes must cope with.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qsl

import httptools
import uvloop

from kapa.core import contract
from kapa.core.log import configure, get_logger

log = get_logger(__name__)

MAX_SLEEP_MS = 600_000
MAX_PRIME = 100_000_000
MAX_BLOAT_MB = 4096
#: Pipelined requests a connection may queue behind a slow one before the app stops reading from it.
MAX_BACKLOG_PER_CONNECTION = 32
_PAGE = 4096
_MB = 1024 * 1024

_REASONS = {200: "OK", 400: "Bad Request"}


@dataclass(frozen=True)
class SampleAppConfig:
    host: str = "127.0.0.1"
    port: int = contract.USER_PORT
    ready_path: str = contract.READY_PATH
    startup_delay_s: float = 0.0


@dataclass(frozen=True)
class Work:
    """What one request asks for; zero means 'not asked'."""

    sleep_ms: int = 0
    prime_below: int = 0
    bloat_mb: int = 0


class BadParameter(ValueError):
    """A query parameter the app cannot act on; its message is the 400 body."""


_LIMITS = {"sleep": MAX_SLEEP_MS, "prime": MAX_PRIME, "bloat": MAX_BLOAT_MB}
_UNITS = {"sleep": "milliseconds", "prime": "(compute primes below it)", "bloat": "MB"}


def parse_work(query: str) -> Work:
    """Read sleep/prime/bloat from a query string; other parameters are ignored, as the real sample does."""
    values: dict[str, int] = {}
    for name, raw in parse_qsl(query, keep_blank_values=True):
        if name not in _LIMITS:
            continue
        limit = _LIMITS[name]
        text = raw.strip()
        if not (text.isascii() and text.isdigit()) or int(text) > limit:
            raise BadParameter(f"{name} must be a whole number from 0 to {limit} {_UNITS[name]}, got {raw!r}")
        values[name] = int(text)
    return Work(values.get("sleep", 0), values.get("prime", 0), values.get("bloat", 0))


def primes_below(limit: int) -> tuple[int, int]:
    """(how many primes are below `limit`, the largest of them or 0): a sieve, so the work grows with n."""
    if limit <= 2:
        return 0, 0
    sieve = bytearray([1]) * limit
    sieve[0] = sieve[1] = 0
    for candidate in range(2, int((limit - 1) ** 0.5) + 1):
        if sieve[candidate]:
            start = candidate * candidate
            sieve[start::candidate] = bytes(len(range(start, limit, candidate)))
    return sieve.count(1), sieve.rfind(1)


def bloat(megabytes: int) -> bytearray:
    """Allocate `megabytes` MB and write to every page, so the memory is really resident, not just reserved."""
    buffer = bytearray(megabytes * _MB)
    pages = len(range(0, len(buffer), _PAGE))
    buffer[::_PAGE] = b"\x01" * pages
    return buffer


def compute(work: Work) -> tuple[list[str], bytearray | None]:
    """Do the synchronous part of `work` (memory, primes); the caller sleeps and then drops the memory."""
    lines: list[str] = []
    memory = None
    if work.bloat_mb:
        memory = bloat(work.bloat_mb)
        lines.append(f"allocated and touched {work.bloat_mb} MB")
    if work.prime_below:
        started = time.perf_counter()
        count, largest = primes_below(work.prime_below)
        took_ms = (time.perf_counter() - started) * 1000
        if count:
            lines.append(f"largest prime below {work.prime_below} is {largest} ({count} primes, {took_ms:.1f} ms)")
        else:
            lines.append(f"no prime below {work.prime_below} ({took_ms:.1f} ms)")
    return lines, memory


def render(status: int, body: bytes, keep_alive: bool, head_only: bool = False) -> bytes:
    connection = b"" if keep_alive else b"Connection: close\r\n"
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    return head + connection + b"\r\n" + (b"" if head_only else body)


_HELLO = b"ok: nothing asked (query parameters: sleep=MS, prime=N, bloat=MB)\n"
_HELLO_KEEP_ALIVE = render(200, _HELLO, keep_alive=True)
_READY = b"ready\n"


@dataclass(frozen=True)
class _Request:
    path: bytes
    query: bytes
    keep_alive: bool
    head_only: bool


class SampleAppProtocol(asyncio.Protocol):
    """One connection: HTTP/1.1 keep-alive and pipelining, responses in request order.

    A request that needs no waiting is answered inside data_received. One that sleeps goes to a per-connection
    task, and every request behind it on the same connection waits its turn there, so the order holds.
    """

    def __init__(self, ready_path: bytes) -> None:
        self._ready_path = ready_path
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._backlog: deque[_Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    # --- transport callbacks --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(b"upgrades are not supported by the sample app\n")
        except httptools.HttpParserError as error:
            self._fail(f"malformed request: {error}\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._worker is not None:
            self._worker.cancel()

    # --- parser callbacks -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        if self._url == b"/" and keep_alive and self._worker is None and parser.get_method() == b"GET":
            self._transport.write(_HELLO_KEEP_ALIVE)  # type: ignore[union-attr]
            return
        path, _, query = self._url.partition(b"?")
        request = _Request(path, query, keep_alive, parser.get_method() == b"HEAD")
        if self._worker is None:
            self._answer_now_or_queue(request)
        else:
            self._queue(request)

    # --- answering ------------------------------------------------------------------------------------

    def _answer_now_or_queue(self, request: _Request) -> None:
        try:
            work = self._work_of(request)
        except BadParameter as error:
            self._respond(request, 400, f"{error}\n".encode())
            return
        if work is None:
            self._respond(request, 200, _READY)
        elif work.sleep_ms:
            self._queue(request)
        else:
            lines, _memory = compute(work)
            self._respond(request, 200, _body(lines))

    def _queue(self, request: _Request) -> None:
        self._backlog.append(request)
        if len(self._backlog) >= MAX_BACKLOG_PER_CONNECTION and self._transport is not None:
            self._transport.pause_reading()
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain_backlog())

    async def _drain_backlog(self) -> None:
        while self._backlog and not self._closing:
            request = self._backlog.popleft()
            if len(self._backlog) < MAX_BACKLOG_PER_CONNECTION and self._transport is not None:
                self._transport.resume_reading()
            try:
                work = self._work_of(request)
            except BadParameter as error:
                self._respond(request, 400, f"{error}\n".encode())
                continue
            if work is None:
                self._respond(request, 200, _READY)
                continue
            lines, memory = compute(work)
            if work.sleep_ms:
                await asyncio.sleep(work.sleep_ms / 1000)
                lines.append(f"slept {work.sleep_ms} ms")
            self._respond(request, 200, _body(lines))
            del memory  # held for the whole request, released once answered
        self._worker = None

    def _work_of(self, request: _Request) -> Work | None:
        """The work a request asks for, or None for the readiness path."""
        if request.path == self._ready_path:
            return None
        return parse_work(request.query.decode("latin-1"))

    def _respond(self, request: _Request, status: int, body: bytes) -> None:
        if self._closing or self._transport is None:
            return
        self._transport.write(render(status, body, request.keep_alive, request.head_only))
        if not request.keep_alive:
            self._close()

    def _fail(self, body: bytes) -> None:
        if self._transport is not None:
            self._transport.write(render(400, body, keep_alive=False))
        self._close()

    def _close(self) -> None:
        self._closing = True
        self._backlog.clear()
        if self._transport is not None:
            self._transport.close()


def _body(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() if lines else _HELLO


def protocol_factory(config: SampleAppConfig) -> Callable[[], SampleAppProtocol]:
    ready_path = config.ready_path.encode()
    return lambda: SampleAppProtocol(ready_path)


async def serve(config: SampleAppConfig, stop: asyncio.Event) -> None:
    """Wait the start-up delay, listen, and serve until `stop` is set (stopping early also skips the wait)."""
    if config.startup_delay_s > 0:
        log.info("delaying start-up", delay_s=config.startup_delay_s)
        try:
            await asyncio.wait_for(stop.wait(), config.startup_delay_s)
            return
        except TimeoutError:
            pass
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        protocol_factory(config), config.host, config.port, reuse_address=True, backlog=2048
    )
    log.info("listening", host=config.host, port=config.port, ready_path=config.ready_path)
    async with server:
        await stop.wait()
    log.info("stopped")


async def _run(config: SampleAppConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(config, stop)


def _env_number(name: str, default: str, kind: type[int] | type[float]) -> int | float:
    raw = os.environ.get(name, default)
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"kapa sample-app: error: environment variable {name} must be a number, got {raw!r}") from None


def parse_args(argv: list[str]) -> SampleAppConfig:
    parser = argparse.ArgumentParser(prog="kapa sample-app", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help=f"port (default: env PORT, else {contract.USER_PORT})")
    parser.add_argument("--ready-path", default=contract.READY_PATH, help="readiness path answering 200")
    parser.add_argument(
        "--startup-delay", type=float, help="seconds to wait before listening (default: env STARTUP_DELAY, else 0)"
    )
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else _env_number("PORT", str(contract.USER_PORT), int)
    delay = args.startup_delay if args.startup_delay is not None else _env_number("STARTUP_DELAY", "0", float)
    if not 0 <= port <= 65535:
        parser.error(f"port must be 0-65535, got {port}")
    if delay < 0:
        parser.error(f"startup delay must be >= 0 seconds, got {delay}")
    if not args.ready_path.startswith("/"):
        parser.error(f"ready path must start with '/', got {args.ready_path!r}")
    return SampleAppConfig(args.host, int(port), args.ready_path, float(delay))


def main(argv: list[str]) -> int:
    try:
        config = parse_args(argv)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
            return 2
        return int(exit_.code or 0)
    configure()
    uvloop.run(_run(config))
    return 0
