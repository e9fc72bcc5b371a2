"""`kapa load`: drive HTTP load like `hey` and report latency, status codes and errors.

    kapa load -c 50 -z 30s --sleep 100 http://127.0.0.1:8080/
    kapa load -n 1000 -c 10 -q 200 -H "Host: hello.default" http://127.0.0.1:8081/

Each of `-c` workers holds one keep-alive connection and sends one request at a time, like hey. The run
stops by itself: after `-n` requests in total (responses and errors alike, exactly), or when the `-z`
duration is over (requests still in flight then are cancelled and reported as unfinished), whichever comes
first; with neither, 200 requests as in hey.

`-q` is the TOTAL rate in requests/s across all workers (hey's `-q` is per worker): each worker is paced at
q/c, so q=1000 with c=10 sends one request per worker every 10 ms. It is a cap: a worker that falls behind
does not burst to catch up. Latency is measured from sending the request to reading the whole response.

Errors are counted by kind (refused, timeout, reset, protocol, other) and never end the run. After a
failed connect a worker waits 10 ms before trying again, so a dead server does not spin a core.

In-process use, e.g. from the tests of other parts:

    result = await run_load(LoadConfig(url="http://127.0.0.1:8012/?sleep=100", concurrency=20, requests=200))
    assert result.status_counts == {200: 200}

The client is an asyncio protocol with httptools, so one core drives tens of thousands of requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop

DEFAULT_REQUESTS = 200
DEFAULT_CONCURRENCY = 50
DEFAULT_TIMEOUT_S = 20.0
#: How long a worker waits after a failed connect before the next attempt.
CONNECT_RETRY_BACKOFF_S = 0.01

ERROR_REFUSED = "refused"
ERROR_TIMEOUT = "timeout"
ERROR_RESET = "reset"
ERROR_PROTOCOL = "protocol"
ERROR_OTHER = "other"


@dataclass(frozen=True)
class LoadConfig:
    """One load run. `requests` and `duration_s` bound it (whichever ends first); if neither is given the
    run sends DEFAULT_REQUESTS. `rate` is the total requests/s over all workers, None for as fast as
    possible. Invalid values raise ValueError naming the option."""

    url: str
    concurrency: int = DEFAULT_CONCURRENCY
    requests: int | None = None
    duration_s: float | None = None
    rate: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency (-c) must be at least 1, got {self.concurrency}")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests (-n) must be at least 1, got {self.requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration (-z) must be positive, got {self.duration_s}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate (-q) must be positive, got {self.rate}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout (-t) must be positive, got {self.timeout_s}")
        for name, value in self.headers:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or "\r" in value or "\n" in value:
                raise ValueError(f"header (-H) is not a valid HTTP header: {name!r}: {value!r}")
        _Target.parse(self.url, self.headers)

    @property
    def request_limit(self) -> int | None:
        if self.requests is None and self.duration_s is None:
            return DEFAULT_REQUESTS
        return self.requests


@dataclass(frozen=True)
class LoadResult:
    """What a run observed. Latencies are of responses of any status, sorted ascending, in seconds."""

    elapsed_s: float
    latencies_s: tuple[float, ...]
    status_counts: Mapping[int, int]
    error_counts: Mapping[str, int]
    #: Requests still in flight when the duration ended or the run was stopped (cancelled, neither
    #: responses nor errors).
    unfinished: int = 0

    @property
    def responses(self) -> int:
        return len(self.latencies_s)

    @property
    def errors(self) -> int:
        return sum(self.error_counts.values())

    @property
    def requests(self) -> int:
        """Requests that ended: responses plus errors."""
        return self.responses + self.errors

    @property
    def responses_per_s(self) -> float:
        return self.responses / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_quantile_s(self, quantile: float) -> float:
        """The nearest-rank quantile (0 < quantile <= 1) of response latency; 0.0 with no responses."""
        if not self.latencies_s:
            return 0.0
        rank = max(1, math.ceil(quantile * len(self.latencies_s)))
        return self.latencies_s[rank - 1]

    @property
    def mean_latency_s(self) -> float:
        return sum(self.latencies_s) / len(self.latencies_s) if self.latencies_s else 0.0

    def summary(self) -> dict[str, object]:
        """The figures as plain data (for --json and for other tools)."""
        ms = 1000.0
        return {
            "requests": self.requests,
            "responses": self.responses,
            "errors": self.errors,
            "unfinished": self.unfinished,
            "elapsed_s": round(self.elapsed_s, 3),
            "responses_per_s": round(self.responses_per_s, 1),
            "latency_ms": {
                "mean": round(self.mean_latency_s * ms, 3),
                "p50": round(self.latency_quantile_s(0.50) * ms, 3),
                "p90": round(self.latency_quantile_s(0.90) * ms, 3),
                "p99": round(self.latency_quantile_s(0.99) * ms, 3),
                "max": round((self.latencies_s[-1] if self.latencies_s else 0.0) * ms, 3),
            },
            "status_counts": {str(code): count for code, count in sorted(self.status_counts.items())},
            "error_counts": dict(sorted(self.error_counts.items())),
        }

    def report(self) -> str:
        """A hey-like text summary."""
        figures = self.summary()
        latency = cast(dict[str, float], figures["latency_ms"])
        lines = [
            "Summary:",
            f"  requests:    {self.requests} ({self.responses} responses, {self.errors} errors,"
            f" {self.unfinished} unfinished: in flight when the duration ended, cancelled, not failures)",
            f"  elapsed:     {self.elapsed_s:.3f} s",
            f"  responses/s: {self.responses_per_s:.1f}",
            "",
            "Latency (ms):",
            "  " + "  ".join(f"{name} {value:.3f}" for name, value in latency.items()),
            "",
            "Status codes:",
        ]
        lines += [f"  [{code}] {count}" for code, count in sorted(self.status_counts.items())] or ["  (none)"]
        if self.error_counts:
            lines += ["", "Errors:"] + [f"  {kind}: {count}" for kind, count in sorted(self.error_counts.items())]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    request: bytes

    @classmethod
    def parse(cls, url: str, headers: tuple[tuple[str, str], ...]) -> _Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"URL must be http://HOST[:PORT]/..., got {url!r}")
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError(f"URL has an invalid port: {url!r}") from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        given = {name.lower() for name, _ in headers}
        lines = [f"GET {target} HTTP/1.1"]
        if "host" not in given:
            lines.append(f"Host: {parts.netloc}")
        if "user-agent" not in given:
            lines.append("User-Agent: kapa-load")
        lines += [f"{name}: {value}" for name, value in headers]
        return cls(parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


class _RequestFailed(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class _ClosedEarly(_RequestFailed):
    """The server closed the connection before the whole response arrived."""

    def __init__(self, received_any: bool) -> None:
        super().__init__(ERROR_RESET, "connection closed before the response was complete")
        self.received_any = received_any


class _ClientConnection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.reusable = True
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[int] | None = None
        self._received_any = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._settle(_RequestFailed(ERROR_PROTOCOL, str(error)))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._settle(_ClosedEarly(self._received_any))

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(self._parser.get_status_code())

    def _settle(self, error: Exception) -> None:
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    async def exchange(self, request: bytes, timeout_s: float) -> int:
        """Send `request` and return the response's status once the whole response is read."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        self._waiter = waiter
        self._received_any = False
        self.transport.write(request)
        timer = loop.call_later(timeout_s, self._settle, _RequestFailed(ERROR_TIMEOUT, f"no response in {timeout_s}s"))
        try:
            return await waiter
        finally:
            timer.cancel()

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


def _error_kind(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return ERROR_REFUSED
    if isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return ERROR_RESET
    if isinstance(error, TimeoutError):
        return ERROR_TIMEOUT
    return ERROR_OTHER


@dataclass
class _Run:
    config: LoadConfig
    target: _Target
    limit: int | None
    deadline: float = math.inf
    started: int = 0
    unfinished: int = 0
    latencies: list[float] = field(default_factory=list)
    status_counts: dict[int, int] = field(default_factory=dict)
    error_counts: dict[str, int] = field(default_factory=dict)

    def _claim(self) -> bool:
        """Take one request from the budget, if the count and the duration allow another."""
        if self.limit is not None and self.started >= self.limit:
            return False
        if time.perf_counter() >= self.deadline:
            return False
        self.started += 1
        return True

    async def worker(self, index: int) -> None:
        config = self.config
        interval = config.concurrency / config.rate if config.rate else 0.0
        next_at = time.perf_counter() + (index / config.rate if config.rate else 0.0)
        connection: _ClientConnection | None = None
        try:
            while True:
                if interval:
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at = max(next_at + interval, time.perf_counter())
                if not self._claim():
                    return
                sent = time.perf_counter()
                try:
                    connection, status = await self._request(connection, sent)
                except _RequestFailed as failure:
                    connection = None
                    self.error_counts[failure.kind] = self.error_counts.get(failure.kind, 0) + 1
                    if failure.kind == ERROR_REFUSED:
                        await asyncio.sleep(CONNECT_RETRY_BACKOFF_S)
                except asyncio.CancelledError:
                    self.unfinished += 1
                    raise
                else:
                    self.latencies.append(time.perf_counter() - sent)
                    self.status_counts[status] = self.status_counts.get(status, 0) + 1
        finally:
            if connection is not None:
                connection.close()

    async def _request(self, connection: _ClientConnection | None, sent: float) -> tuple[_ClientConnection | None, int]:
        """One request on `connection` (or a new one); returns the connection to reuse and the status."""
        fresh = connection is None or not connection.open
        if connection is None or not connection.open:
            connection = await self._connect(sent)
        try:
            try:
                status = await connection.exchange(self.target.request, self._remaining(sent))
            except _ClosedEarly as closed:
                if fresh or closed.received_any:
                    raise
                # The server closed an idle keep-alive connection as we reused it: retry once on a new one.
                connection = await self._connect(sent)
                status = await connection.exchange(self.target.request, self._remaining(sent))
        except BaseException:  # failed or cancelled: this connection's state is unknown, never reuse it
            connection.close()
            raise
        if not connection.reusable:
            connection.close()
            return None, status
        return connection, status

    def _remaining(self, sent: float) -> float:
        remaining = self.config.timeout_s - (time.perf_counter() - sent)
        if remaining <= 0:
            raise _RequestFailed(ERROR_TIMEOUT, f"no response in {self.config.timeout_s}s")
        return remaining

    async def _connect(self, sent: float) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_ClientConnection, self.target.host, self.target.port),
                self._remaining(sent),
            )
        except OSError as error:  # TimeoutError is an OSError too
            raise _RequestFailed(_error_kind(error), str(error)) from None
        return protocol


async def run_load(config: LoadConfig, stop: asyncio.Event | None = None) -> LoadResult:
    """Run the load `config` describes and return what it observed; setting `stop` ends it early."""
    run = _Run(config, _Target.parse(config.url, config.headers), config.request_limit)
    workers = config.concurrency if run.limit is None else min(config.concurrency, run.limit)
    begun = time.perf_counter()
    if config.duration_s is not None:
        run.deadline = begun + config.duration_s
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(run.worker(index)) for index in range(workers)]
    # The run ends when every worker is done, the duration is over or `stop` is set, whichever is first.
    endings: list[asyncio.Task[object]] = [loop.create_task(asyncio.wait(tasks))]
    if stop is not None:
        endings.append(loop.create_task(stop.wait()))
    try:
        await asyncio.wait(endings, timeout=config.duration_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in endings + tasks:
            task.cancel()
        await asyncio.gather(*endings, *tasks, return_exceptions=True)
    elapsed = time.perf_counter() - begun
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise cast(BaseException, task.exception())
    return LoadResult(
        elapsed_s=elapsed,
        latencies_s=tuple(sorted(run.latencies)),
        status_counts=dict(run.status_counts),
        error_counts=dict(run.error_counts),
        unfinished=run.unfinished,
    )


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration ('30s', '1m', '1m30s', '500ms') or a plain number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration (like 30s, 1m, 1m30s, 500ms): {text!r}")
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def with_sample_params(url: str, sleep_ms: int | None, prime: int | None, bloat_mb: int | None) -> str:
    """`url` with the sample app's query parameters appended."""
    params = [f"{name}={value}" for name, value in (("sleep", sleep_ms), ("prime", prime), ("bloat", bloat_mb))
              if value is not None]
    if not params:
        return url
    base, _, fragment = url.partition("#")
    separator = "&" if "?" in base else "?"
    return base + separator + "&".join(params) + (f"#{fragment}" if fragment else "")


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kapa load",
        description="Drive HTTP load like hey and print a latency summary and status code counts.",
    )
    parser.add_argument("url", help="http://HOST[:PORT]/PATH")
    parser.add_argument("-c", type=int, default=DEFAULT_CONCURRENCY, dest="concurrency",
                        help=f"concurrent workers, one connection each (default {DEFAULT_CONCURRENCY})")
    parser.add_argument("-n", type=int, dest="requests",
                        help=f"total requests (default {DEFAULT_REQUESTS} unless -z is given)")
    parser.add_argument("-z", type=_duration, dest="duration_s", help="duration, e.g. 30s, 1m (with -n: first wins)")
    parser.add_argument("-q", type=float, dest="rate", help="rate limit: TOTAL requests/s over all workers")
    parser.add_argument("-H", type=_header, action="append", default=[], dest="headers",
                        help="extra header 'Name: value' (repeatable), e.g. -H 'Host: hello.default'")
    parser.add_argument("-t", type=float, default=DEFAULT_TIMEOUT_S, dest="timeout_s",
                        help=f"per-request timeout in seconds (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--sleep", type=_non_negative, metavar="MS", help="add sleep=MS (sample app)")
    parser.add_argument("--prime", type=_non_negative, metavar="N", help="add prime=N (sample app)")
    parser.add_argument("--bloat", type=_non_negative, metavar="MB", help="add bloat=MB (sample app)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


async def _main(config: LoadConfig) -> LoadResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await run_load(config, stop)


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        config = LoadConfig(
            url=with_sample_params(args.url, args.sleep, args.prime, args.bloat),
            concurrency=args.concurrency,
            requests=args.requests,
            duration_s=args.duration_s,
            rate=args.rate,
            headers=tuple(args.headers),
            timeout_s=args.timeout_s,
        )
    except ValueError as error:
        print(f"kapa load: error: {error}", file=sys.stderr)
        return 2
    result = uvloop.run(_main(config))
    print(json.dumps(result.summary(), indent=2) if args.json else result.report())
    return 0
