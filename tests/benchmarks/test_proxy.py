"""The proxy benchmark: wrk output parsing, and one short real run (figures are not judged, only present)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from benchmarks.harness import WrkResult, cpu_seconds, parse_wrk
from tests.support import REPO

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8080/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   436.97us  320.32us   9.60ms   96.78%
    Req/Sec   111.72k    13.28k  129.28k    83.87%
  Latency Distribution
     50%  392.00us
     75%  477.00us
     90%  624.00us
     99%    1.90ms
  1103443 requests in 10.10s, 47.91MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec: 110987.43
Transfer/sec:     15.45MB
"""


def test_parse_wrk() -> None:
    assert parse_wrk(WRK_OUTPUT) == WrkResult(
        requests=1103443, requests_per_s=110987.43, latency_p50_ms=pytest.approx(0.392),
        latency_p99_ms=pytest.approx(1.9), errors=12,
    )


def test_parse_wrk_seconds_and_no_errors() -> None:
    output = WRK_OUTPUT.replace("    1.90ms", "    1.20s")
    output = output.replace("  Socket errors: connect 0, read 3, write 0, timeout 2\n", "")
    output = output.replace("  Non-2xx or 3xx responses: 7\n", "")
    result = parse_wrk(output)
    assert result.latency_p99_ms == pytest.approx(1200)
    assert result.errors == 0


def test_parse_wrk_rejects_other_output() -> None:
    with pytest.raises(ValueError, match="wrk output lacks"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_cpu_seconds_of_this_process_grows() -> None:
    before = cpu_seconds(os.getpid())
    total = 0
    while cpu_seconds(os.getpid()) - before < 0.05:
        total += sum(range(10_000))
    assert total > 0


@pytest.mark.slow
def test_short_run_reports_every_target() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.proxy", "--duration", "1s", "--warmup", "0", "--rate", "200",
         "--rate-duration", "1s", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(completed.stdout)
    rows = {row["target"]: row for row in figures["throughput"]}
    assert rows["direct"]["wrk"]["requests_per_s"] > 0
    assert rows["envoy"]["wrk"]["requests_per_s"] > 0
    assert rows["envoy"]["requests_per_proxy_cpu_s"] > 0
    assert figures["ratios"]["envoy/direct req/s"] > 0
    fixed = {row["target"]: row for row in figures["fixed_rate"]}
    assert fixed["direct"]["requests"] > 100
    assert fixed["envoy"]["p99_added_ms"] is not None
    if importlib.util.find_spec("queue_proxy.__main__") is not None:
        assert rows["queue-proxy"]["unavailable"] is None, rows["queue-proxy"]
        assert rows["queue-proxy"]["requests_per_proxy_cpu_s"] > 0
    else:
        assert "not in this checkout" in rows["queue-proxy"]["unavailable"]
