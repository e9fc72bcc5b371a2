"""Helpers for tests that start real processes on loopback: free ports, readiness waits, clean-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
#: The `kapa` command of the environment running the tests.
KAPA = [sys.executable, "-m", "kapa"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def serve_app(app: web.Application, port: int) -> web.AppRunner:
    """Serve an aiohttp app on 127.0.0.1:`port` until the returned runner's `cleanup()`."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.02)


def wait_for_http(url: str, timeout_s: float = 10.0, status: int = 200) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == status:
                    return
                last = response.status
        except urllib.error.HTTPError as error:
            last = error.code
            if error.code == status:
                return
        except OSError as error:
            last = error
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s}s (last: {last})")


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL the process group, so no child outlives a test."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def running(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a command in its own process group for the duration of the block, then stop it. `preexec_fn`
    runs in the child before the command (the benchmarks pin CPUs with it)."""
    full_env = {**os.environ, **(env or {})}
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        list(args), env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_fn
    )
    try:
        yield process
    finally:
        stop_process(process)
        if log:
            out.close()  # type: ignore[union-attr]
