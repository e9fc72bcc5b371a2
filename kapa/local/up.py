"""`kapa up`: the whole autoscaling loop on one machine, README's first command.

    kapa up [--services FILE] [--config FILE] [--port PORT] [--envoy] [--no-view]

Starts a real Prometheus, the scaler, the activator and each service's replicas as local processes on
loopback, then shows what the scaler sees and decides, live; a part that exits is started again (and the
view says so). While it runs, `kapa explain SERVICE` finds its scaler. Ctrl-C stops everything, and so does
the loss of stdout's reader (`kapa up | head -1`); if kapa up is killed, its processes die with it
(kapa.local.processes).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import uvloop
import yaml
from rich.console import Console
from rich.live import Live

from kapa.core.contract import SCALER_EXPLAIN_PATH
from kapa.local.app_spec import AppSpec, AppSpecError, app_spec
from kapa.local.backend import LOCAL_DRAIN_SECONDS
from kapa.local.stack import LocalStack, StackOptions
from kapa.local.telemetry import Telemetry, TelemetryReader
from kapa.local.view import ReplicaHistory, ServiceStatus, change_line, render, restart_lines
from kapa.core.log import configure, get_logger
from kapa.local.prometheus import PrometheusNotInstalled
from kapa.core.services import ServiceEntry, ServiceKey, ServicesFileError, load_services, parse_services
from scaler.config_file import load_config_file
from scaler.explain import announce_local_scaler
from kapa.core.settings import AutoscalerConfig, service_config

log = get_logger(__name__)

REFRESH_S = 1.0
DEFAULT_SERVICES = "default_services.yaml"
PROMETHEUS_MISSING = (
    "kapa up: Prometheus is not installed ({binary} is missing). Kapa's scaler reads real Prometheus.\n"
    "  Install it with `make setup` (in the Kapa checkout), or `sudo apt-get install prometheus`, then run again."
)


def kapa_command() -> str:
    """The command that runs this same `kapa` from any directory, to print in commands meant to be pasted:
    `kapa` when PATH finds this very script; else the script's absolute path (`make up` runs .venv/bin/kapa,
    which is not on PATH); `PYTHON -m kapa` when started that way."""
    script = Path(sys.argv[0])
    if script.name != "kapa":  # python -m kapa (argv[0] is kapa/__main__.py)
        return f"{shlex.quote(sys.executable)} -m kapa"
    on_path = shutil.which("kapa")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "kapa"
    return shlex.quote(os.path.abspath(script))


def setting_warnings(entries: list[ServiceEntry], config: AutoscalerConfig) -> list[str]:
    """Each service's rejected annotations, as the scaler (and the activator) will reject them, each then
    using its default. Those log to their own files under logs/; kapa up says it where the user looks."""
    return [str(error) for entry in entries for error in service_config(config, entry.spec)[1]]


def default_services_text() -> str:
    """The services file used when none is given (the same as examples/hello.yaml)."""
    return resources.files("kapa.local").joinpath(DEFAULT_SERVICES).read_text()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kapa up",
        description="Run the whole autoscaling loop on this machine: a real Prometheus, the scaler, the activator "
        "and each service's replicas as local processes on loopback, with a live view. Ctrl-C stops everything.",
    )
    parser.add_argument("--services", type=Path, metavar="FILE",
                        help="services file (default: the sample app as default/hello, like examples/hello.yaml)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="Knative config-autoscaler keys: a YAML mapping (e.g. stable-window: 20s) or a ConfigMap")
    parser.add_argument("--port", type=int, default=0, help="port to send traffic to (default: a free port)")
    parser.add_argument("--envoy", action="store_true", help="put Envoy (programmed by the gateway) in front")
    parser.add_argument("--no-view", action="store_true", help="print a line per change instead of the live view")
    parser.add_argument("--drain-seconds", type=float, default=LOCAL_DRAIN_SECONDS, metavar="S",
                        help="how long a replica being removed waits for quiet before it exits "
                             f"(default {LOCAL_DRAIN_SECONDS:g})")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535, got {args.port}")
    if args.drain_seconds < 0:
        parser.error(f"--drain-seconds must not be negative, got {args.drain_seconds}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.services is None:
            entries = parse_services(yaml.safe_load(default_services_text()), "<default services>")
        else:
            entries = load_services(args.services)
        apps = {entry.spec.key: app_spec(entry) for entry in entries}
    except (ServicesFileError, AppSpecError) as error:
        print(f"kapa up: {error}", file=sys.stderr)
        return 2
    if not entries:
        print("kapa up: the services file lists no service", file=sys.stderr)
        return 2
    config = AutoscalerConfig.default()
    warnings: list[str] = []
    if args.config is not None:
        if not args.config.is_file():
            print(f"kapa up: --config {args.config}: no such file", file=sys.stderr)
            return 2
        config, errors = load_config_file(args.config)
        warnings += [str(error) for error in errors]
    # Each bad value costs only itself: its default is used.
    warnings += setting_warnings(entries, config)
    for warning in warnings:
        print(f"kapa up: warning: {warning}", file=sys.stderr)
    live_view = not args.no_view and sys.stdout.isatty()
    options = StackOptions(services_file=args.services, config=config, entry_port=args.port, envoy=args.envoy,
                           drain_s=args.drain_seconds)
    return uvloop.run(_run(entries, apps, options, live_view, warnings))


class Output:
    """kapa up's lines on stdout, which may be a pipe whose reader is gone: `kapa up | head -1`, or a
    `| tee log` that the same Ctrl-C ended first. Then `lost()` is called once (kapa up stops, as any writer
    to a closed pipe does) and every later line is dropped, so no print can cut kapa up's stop short."""

    def __init__(self, lost: Callable[[], None]) -> None:
        self._lost = lost
        self.closed = False

    def line(self, text: str) -> None:
        if self.closed:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            self.closed = True
            # The interpreter flushes stdout once more at exit: let that flush reach /dev/null, not fail.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            log.info("stdout closed (its reader exited); stopping")
            self._lost()


async def _run(entries: list[ServiceEntry], apps: dict[ServiceKey, AppSpec], options: StackOptions,
               live_view: bool, warnings: Sequence[str] = ()) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP: the terminal closed; still stop everything rather than die and orphan the children.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    configure()
    output = Output(stop.set)
    stack = LocalStack(entries, apps, options, default_services_text())
    if live_view:
        # The screen belongs to the view: logs go to a file next to the children's, with the warnings main()
        # printed (without the view, kapa up's log is stderr, where they already are).
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(open(stack.log_dir / "kapa-up.log", "a"))
        for warning in warnings:
            log.warning("bad setting; its default is used", problem=warning)
    try:
        await stack.start()
    except PrometheusNotInstalled:
        print(PROMETHEUS_MISSING.format(binary=options.prometheus_binary), file=sys.stderr)
        await stack.stop()
        return 1
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"kapa up: could not start: {error}", file=sys.stderr)
        await stack.stop()
        return 1
    # Where `kapa explain` without --scaler finds this scaler.
    announcement = announce_local_scaler(stack.scaler_url)
    try:
        header = _banner(stack, kapa_command())
        if not live_view:
            for line in header:
                output.line(line)
        await _show(stack, stop, header, output, Console() if live_view else None)
    finally:
        announcement.unlink(missing_ok=True)
        output.line("kapa up: stopping: scaler, replicas, activator, Prometheus")
        await stack.stop()
        output.line("kapa up: stopped")
    return 0


def _banner(stack: LocalStack, kapa: str) -> list[str]:
    """Where things are, with commands that work pasted as printed (`kapa` is `kapa_command()`)."""
    first = stack.entries[0].spec.key
    lines = [
        f"kapa up: running {len(stack.entries)} service(s); logs in {stack.log_dir}; Ctrl-C stops everything",
        f"Send traffic to {stack.entry_url} with a Host header ({stack.traffic_path}), for example:",
        f"  {kapa} load -c 50 -z 30s -H 'Host: {first.name}.{first.namespace}' --sleep 100 {stack.entry_url}/",
        f"Prometheus: {stack.prometheus.url}",
    ]
    lines += [f"Explain:    {stack.scaler_url}{SCALER_EXPLAIN_PATH.format(namespace=key.namespace, name=key.name)}"
              for key in (entry.spec.key for entry in stack.entries)]
    lines.append(f"            in words: {kapa} explain {first} --scaler {stack.scaler_url}")
    return lines


async def _show(stack: LocalStack, stop: asyncio.Event, header: list[str], output: Output,
                console: Console | None) -> None:
    """Refresh the view (or print changes, and each restart of a part) every REFRESH_S until stopped."""
    telemetry_source = TelemetryReader(stack.prometheus.url, stack.activator_metrics_url)
    history = ReplicaHistory()
    # The unit of each service's observed values and target, as the scaler resolves it.
    metrics = {entry.spec.key: service_config(stack.options.config, entry.spec)[0].metric for entry in stack.entries}
    previous: dict[ServiceKey, ServiceStatus] = {}
    restarts_seen: dict[str, int] = {}
    live = Live(console=console, refresh_per_second=4, transient=False) if console else None
    try:
        if live:
            live.start()
        while not stop.is_set():
            telemetry = await telemetry_source.read()
            statuses = [_status(stack, key, metrics[key], telemetry, history) for key in stack.backend.keys]
            restarts = stack.restarts()
            if live:
                live.update(render(statuses, [*header, *restart_lines(restarts)]))
            else:
                for status in statuses:
                    line = change_line(previous.get(status.key), status)
                    if line:
                        output.line(line)
                    previous[status.key] = status
                for part, count in restarts.items():
                    if count != restarts_seen.get(part, 0):
                        output.line(f"part={part} restarts={count}")
                restarts_seen = dict(restarts)
            try:
                await asyncio.wait_for(stop.wait(), REFRESH_S)
            except TimeoutError:
                pass
    finally:
        if live:
            live.stop()
        await telemetry_source.close()


def _status(stack: LocalStack, key: ServiceKey, metric: str, telemetry: Telemetry,
            history: ReplicaHistory) -> ServiceStatus:
    counts = stack.backend.counts(key)
    decision = stack.decision(key)
    return ServiceStatus(
        key=key,
        metric=metric,
        desired=counts.desired,
        ready=counts.ready,
        starting=counts.starting,
        draining=counts.draining,
        failures=counts.failures,
        stable=None if decision is None else decision.stable_value,
        panic=None if decision is None else decision.panic_value,
        target=None if decision is None else decision.target,
        panic_mode=bool(decision and decision.panic_mode),
        stale=bool(decision and decision.stale) or telemetry.rps is None,
        # The scaler decides it either way; only Envoy acts on it (without it all goes through the activator).
        mode=None if decision is None else decision.mode,
        rps=None if telemetry.rps is None else telemetry.rps.get(key, 0.0),
        held=None if telemetry.held is None else telemetry.held.get(key, 0),
        history=history.record(key, counts.ready),
    )
