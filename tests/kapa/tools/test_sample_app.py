"""The sample app, as a real process on loopback: each parameter, bad input, readiness and start-up delay."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kapa.tools import sample_app
from kapa.tools.sample_app import BadParameter, Work, parse_work, primes_below
from tests.support import KAPA, free_port, running, wait_for_http, wait_for_port


def get(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with running([*KAPA, "sample-app", "--port", str(port)]) as process:
        wait_for_http(f"http://127.0.0.1:{port}/ready")
        yield f"http://127.0.0.1:{port}", process


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# --- pure logic ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(0, (0, 0)), (2, (0, 0)), (3, (1, 2)), (10, (4, 7)), (1000, (168, 997)), (1_000_000, (78498, 999983))],
)
def test_primes_below(limit: int, expected: tuple[int, int]) -> None:
    assert primes_below(limit) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", Work()),
        ("sleep=100", Work(sleep_ms=100)),
        ("prime=1000&bloat=5&other=x", Work(prime_below=1000, bloat_mb=5)),
        ("sleep=0", Work()),
    ],
)
def test_parse_work(query: str, expected: Work) -> None:
    assert parse_work(query) == expected


@pytest.mark.parametrize("query", ["sleep=abc", "sleep=-1", "sleep=", "prime=1.5", "bloat=99999", "sleep=%C2%B2"])
def test_parse_work_rejects(query: str) -> None:
    with pytest.raises(BadParameter, match=query.split("=")[0]):
        parse_work(query)


# --- the running app --------------------------------------------------------------------------------------


def test_no_parameters_says_so(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    assert get(app[0] + "/") == (200, "ok: nothing asked (query parameters: sleep=MS, prime=N, bloat=MB)\n")


def test_sleep_waits(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    started = time.monotonic()
    assert get(app[0] + "/?sleep=200") == (200, "slept 200 ms\n")
    assert time.monotonic() - started >= 0.2


def test_sleeps_run_concurrently(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: get(app[0] + "/?sleep=500"), range(10)))
    assert answers == [(200, "slept 500 ms\n")] * 10
    # One after another they would take 5 s.
    assert time.monotonic() - started < 2.5


def test_prime_computes(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    status, body = get(app[0] + "/?prime=1000")
    assert status == 200
    assert body.startswith("largest prime below 1000 is 997 (168 primes, ")


def test_bloat_holds_memory_for_the_request_only(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, process = app
    before = rss_mb(process.pid)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(get, url + "/?bloat=200&sleep=3000")
        deadline = time.monotonic() + 2.5
        while (during := rss_mb(process.pid)) - before <= 180 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not answer.done()
        assert answer.result() == (200, "allocated and touched 200 MB\nslept 3000 ms\n")
    assert during - before > 180, (before, during)
    # The response is written before the buffer is dropped and unmapped: give that a moment.
    deadline = time.monotonic() + 3
    while (after := rss_mb(process.pid)) - before >= 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after - before < 50, (before, after)


def test_parameters_combine(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    status, body = get(app[0] + "/?sleep=10&prime=20&bloat=1")
    assert status == 200
    lines = body.splitlines()
    assert lines[0] == "allocated and touched 1 MB"
    assert lines[1].startswith("largest prime below 20 is 19 (8 primes")
    assert lines[2] == "slept 10 ms"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sleep=abc", "sleep must be a whole number from 0 to 600000 milliseconds, got 'abc'"),
        ("prime=-5", "prime must be a whole number from 0 to 100000000"),
        ("bloat=100000", "bloat must be a whole number from 0 to 4096 MB, got '100000'"),
        ("sleep=10&bloat=x", "bloat must be a whole number"),
    ],
)
def test_bad_parameters_get_400(app: tuple[str, subprocess.Popen[bytes]], query: str, message: str) -> None:
    status, body = get(f"{app[0]}/?{query}")
    assert status == 400
    assert message in body


def test_head_has_no_body(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    with urllib.request.urlopen(urllib.request.Request(app[0] + "/", method="HEAD"), timeout=5) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert response.read() == b""


def raw_exchange(url: str, payload: bytes, expect_responses: int) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        received = b""
        while received.count(b"HTTP/1.1 ") < expect_responses or not received.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_pipelined_requests_answer_in_order(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    payload = (
        b"GET /?sleep=200 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /?prime=10 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    received = raw_exchange(app[0], payload, 3)
    first, second, third = (received.index(marker) for marker in (b"slept 200 ms", b"largest prime below 10", b"ready"))
    assert first < second < third


def test_malformed_request_gets_400_and_the_app_keeps_serving(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    received = raw_exchange(app[0], b"NOT HTTP AT ALL\r\n\r\n", 1)
    assert received.startswith(b"HTTP/1.1 400 Bad Request")
    assert get(app[0] + "/")[0] == 200


def test_readiness_path(app: tuple[str, subprocess.Popen[bytes]]) -> None:
    assert get(app[0] + "/ready") == (200, "ready\n")


def test_custom_readiness_path() -> None:
    port = free_port()
    with running([*KAPA, "sample-app", "--port", str(port), "--ready-path", "/healthz"]):
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ready\n")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("how", ["flag", "env"])
def test_startup_delay_keeps_the_port_closed(how: str) -> None:
    port = free_port()
    args = [*KAPA, "sample-app", "--port", str(port)]
    env = {}
    if how == "flag":
        args += ["--startup-delay", "2"]
    else:
        env["STARTUP_DELAY"] = "2"
    started = time.monotonic()
    with running(args, env=env):
        time.sleep(1.0)
        assert not port_open(port)
        wait_for_port(port, timeout_s=10)
        assert time.monotonic() - started >= 2.0
        assert get(f"http://127.0.0.1:{port}/ready") == (200, "ready\n")


def test_port_from_env() -> None:
    port = free_port()
    with running([*KAPA, "sample-app"], env={"PORT": str(port)}):
        wait_for_http(f"http://127.0.0.1:{port}/ready")


@pytest.mark.parametrize(
    "argv", [["--startup-delay", "-1"], ["--port", "70000"], ["--ready-path", "ready"], ["--port", "x"]]
)
def test_invalid_arguments_exit_2(argv: list[str]) -> None:
    assert sample_app.main(argv) == 2


@pytest.mark.parametrize(("delay", "logged"), [("0", "msg=listening"), ("30", 'msg="delaying start-up"')])
def test_sigterm_stops_it_promptly_even_during_the_startup_delay(delay: str, logged: str, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    with running([*KAPA, "sample-app", "--port", str(free_port()), "--startup-delay", delay], log=log) as process:
        deadline = time.monotonic() + 10
        while logged not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
