"""`kapa load` against real servers on loopback: exact counts, bounded duration, rate, statuses, errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest

from kapa.tools import load
from kapa.tools.load import LoadConfig, parse_duration, run_load, with_sample_params
from tests.support import KAPA, free_port, running, wait_for_http


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    port = free_port()
    with running([*KAPA, "sample-app", "--port", str(port)]):
        wait_for_http(f"http://127.0.0.1:{port}/ready")
        yield f"http://127.0.0.1:{port}"


async def _misbehaving(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, statuses: Iterator[int]) -> None:
    """/cycle: 200, 503, 404 in turn; /host: 200 only with Host: hello.default, else 421; /close: 200 with
    Connection: close; /drop: 200 then an unannounced close; /reset: close without answering; /hang: never
    answer."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path == b"/reset":
                break
            if path == b"/hang":
                await asyncio.sleep(30)
                break
            if path == b"/cycle":
                status = next(statuses)
            elif path == b"/host":
                status = 200 if b"\r\nhost: hello.default\r\n" in head.lower() else 421
            else:
                status = 200
            extra = b"Connection: close\r\n" if path == b"/close" else b""
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n%s\r\nok" % (status, extra))
            await writer.drain()
            if path in (b"/close", b"/drop"):
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def bad_url() -> AsyncIterator[str]:
    statuses = itertools.cycle([200, 503, 404])
    server = await asyncio.start_server(lambda r, w: _misbehaving(r, w, statuses), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_request_count_is_exact(app_url: str) -> None:
    result = await run_load(LoadConfig(url=app_url + "/", concurrency=10, requests=237))
    assert result.requests == 237
    assert result.status_counts == {200: 237}
    assert result.error_counts == {}
    assert result.unfinished == 0
    assert len(result.latencies_s) == 237


async def test_fewer_requests_than_workers(app_url: str) -> None:
    result = await run_load(LoadConfig(url=app_url + "/?sleep=10", concurrency=50, requests=3))
    assert result.status_counts == {200: 3}


async def test_duration_bounds_the_run(app_url: str) -> None:
    result = await run_load(LoadConfig(url=app_url + "/?sleep=300", concurrency=5, duration_s=1.0))
    assert 1.0 <= result.elapsed_s < 2.0
    # Each worker finishes about 3 requests of 300 ms in 1 s; the 4th is cut off by the duration.
    assert 10 <= result.responses <= 20
    assert result.unfinished <= 5
    assert result.latency_quantile_s(0.5) >= 0.3


async def test_rate_is_respected(app_url: str) -> None:
    result = await run_load(LoadConfig(url=app_url + "/", concurrency=4, duration_s=2.0, rate=100))
    # At most the rate; somewhat less when this shared machine is busy (a late worker skips its turn).
    assert 140 <= result.responses <= 201, result.summary()


async def test_status_codes_are_counted(bad_url: str) -> None:
    result = await run_load(LoadConfig(url=bad_url + "/cycle", concurrency=3, requests=90))
    assert result.status_counts == {200: 30, 503: 30, 404: 30}
    assert result.errors == 0


async def test_extra_headers_replace_the_host(bad_url: str) -> None:
    config = LoadConfig(url=bad_url + "/host", concurrency=2, requests=6, headers=(("Host", "hello.default"),))
    assert (await run_load(config)).status_counts == {200: 6}
    assert (await run_load(LoadConfig(url=bad_url + "/host", concurrency=1, requests=2))).status_counts == {421: 2}


@pytest.mark.parametrize("path", ["/close", "/drop"])
async def test_closed_connections_are_reopened(bad_url: str, path: str) -> None:
    result = await run_load(LoadConfig(url=bad_url + path, concurrency=2, requests=40))
    assert result.status_counts == {200: 40}
    assert result.error_counts == {}


async def test_reset_is_an_error_kind(bad_url: str) -> None:
    result = await run_load(LoadConfig(url=bad_url + "/reset", concurrency=2, requests=10))
    assert result.error_counts == {load.ERROR_RESET: 10}
    assert result.status_counts == {}


async def test_timeout_is_an_error_kind(bad_url: str) -> None:
    result = await run_load(LoadConfig(url=bad_url + "/hang", concurrency=4, requests=4, timeout_s=0.2))
    assert result.error_counts == {load.ERROR_TIMEOUT: 4}
    assert result.elapsed_s < 2.0


async def test_connection_refused_is_counted_not_raised() -> None:
    result = await run_load(LoadConfig(url=f"http://127.0.0.1:{free_port()}/", concurrency=3, requests=10))
    assert result.error_counts == {load.ERROR_REFUSED: 10}
    assert result.responses == 0


async def test_stop_ends_the_run_early(app_url: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    result = await run_load(LoadConfig(url=app_url + "/?sleep=50", concurrency=2, duration_s=30), stop)
    assert result.elapsed_s < 3.0  # not the 30 s duration
    assert result.responses > 0


def test_command_line_prints_json(app_url: str) -> None:
    completed = subprocess.run(
        [*KAPA, "load", "-n", "50", "-c", "5", "--sleep", "1", "-H", "X-Test: yes", "--json", app_url + "/"],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["requests"] == 50
    assert summary["status_counts"] == {"200": 50}
    assert set(summary["latency_ms"]) == {"mean", "p50", "p90", "p99", "max"}


def test_command_line_prints_a_summary(app_url: str) -> None:
    completed = subprocess.run(
        [*KAPA, "load", "-z", "1s", "-c", "2", "-q", "20", "--prime", "100", app_url + "/"],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Latency (ms):" in completed.stdout
    assert "[200] " in completed.stdout
    assert "p99" in completed.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "0", "http://127.0.0.1:1/"],
        ["-n", "0", "http://127.0.0.1:1/"],
        ["-z", "soon", "http://127.0.0.1:1/"],
        ["-q", "-5", "http://127.0.0.1:1/"],
        ["-H", "no colon", "http://127.0.0.1:1/"],
        ["ftp://127.0.0.1/"],
        [],
    ],
)
def test_invalid_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert load.main(argv) == 2
    assert capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("1m", 60), ("1m30s", 90), ("500ms", 0.5), ("2", 2), ("1h", 3600)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1m junk", "-1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("url", "params", "expected"),
    [
        ("http://h/", (None, None, None), "http://h/"),
        ("http://h/", (100, None, None), "http://h/?sleep=100"),
        ("http://h/?a=1", (None, 7, 2), "http://h/?a=1&prime=7&bloat=2"),
    ],
)
def test_with_sample_params(url: str, params: tuple[int | None, int | None, int | None], expected: str) -> None:
    assert with_sample_params(url, *params) == expected

