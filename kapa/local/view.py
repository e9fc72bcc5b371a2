"""What `kapa up` shows: a live table per service (rich), or one log line per change when not on a terminal.

The view only renders `ServiceStatus` snapshots; `kapa.local.up` assembles them each second from the
backend (replicas), the scaler (its last decision) and Prometheus (requests/s, held requests), so this module
can be tested with made-up statuses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from kapa.core.contract import METRIC_CONCURRENCY, METRIC_RPS
from kapa.core.services import ServiceKey

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
#: The unit of the stable, panic and target columns, per scaling metric.
METRIC_UNITS = {METRIC_CONCURRENCY: "conc.", METRIC_RPS: "req/s"}
#: Seconds of replica history the sparkline shows (one sample a second).
HISTORY_S = 60


@dataclass(frozen=True)
class ServiceStatus:
    """One service at one moment, as the view shows it. None means not known (yet)."""

    key: ServiceKey
    desired: int
    ready: int
    #: What the scaler scales on (METRIC_CONCURRENCY or METRIC_RPS): the unit of stable, panic and target.
    metric: str = METRIC_CONCURRENCY
    starting: int = 0
    draining: int = 0
    failures: int = 0
    stable: float | None = None
    panic: float | None = None
    #: Concurrency (or rps) per replica the scaler aims at, after utilisation.
    target: float | None = None
    panic_mode: bool = False
    stale: bool = False
    #: The scaler's routing: MODE_SERVE (straight to replicas) or MODE_PROXY (through the activator). Only
    #: Envoy acts on it; without Envoy every request goes through the activator whatever the mode.
    mode: str | None = None
    rps: float | None = None
    held: int | None = None
    #: Ready replicas, one sample a second, oldest first.
    history: tuple[int, ...] = ()


class ReplicaHistory:
    """The last HISTORY_S samples of ready replicas per service, for the sparkline."""

    def __init__(self, length: int = HISTORY_S) -> None:
        self._length = length
        self._samples: dict[ServiceKey, deque[int]] = {}

    def record(self, key: ServiceKey, ready: int) -> tuple[int, ...]:
        samples = self._samples.setdefault(key, deque(maxlen=self._length))
        samples.append(ready)
        return tuple(samples)


def sparkline(samples: Sequence[int], top: int | None = None) -> str:
    """One block character per sample, scaled so `top` (at least the largest sample) is a full block."""
    if not samples:
        return ""
    top = max(max(samples), top or 0, 1)
    last = len(SPARK_BLOCKS) - 1
    # Zero is the lowest block; anything above zero at least the next one, so "scaled to zero" stands out.
    return "".join(SPARK_BLOCKS[max(1, round(value * last / top)) if value > 0 else 0] for value in samples)


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(statuses: Sequence[ServiceStatus], header: Sequence[str]) -> Group:
    """The whole screen: the header lines (where things are), one table row per service, then each service's
    sparkline on a line of its own, so the table stays narrow and the history gets the terminal's width."""
    table = Table(box=box.SIMPLE_HEAVY, header_style="bold")
    table.add_column("service", no_wrap=True)
    table.add_column("replicas\nready/want", justify="right")
    table.add_column("starting\ndraining", justify="right")
    # The next three are in the service's metric's unit (concurrent requests or requests/s), said per row.
    table.add_column("scales\non")
    table.add_column("stable\nwindow", justify="right")
    table.add_column("panic\nwindow", justify="right")
    table.add_column("target\n/replica", justify="right")
    table.add_column("mode", no_wrap=True)
    table.add_column("req/s", justify="right")
    table.add_column("held", justify="right")
    table.add_column("data")
    history = Table.grid(padding=(0, 2))
    history.add_column(no_wrap=True)
    history.add_column(no_wrap=True, overflow="crop")
    for status in statuses:
        replicas = Text(f"{status.ready}/{status.desired}", style="bold green" if status.ready == status.desired
                        else "bold yellow")
        mode = Text("PANIC", style="bold red") if status.panic_mode else Text("stable")
        if status.mode:
            mode.append(f" {status.mode}", style="dim")
        data = Text("STALE", style="bold red") if status.stale else Text("fresh", style="green")
        if status.failures:
            data.append(f" {status.failures} failed", style="red")
        table.add_row(
            str(status.key),
            replicas,
            f"{status.starting}/{status.draining}",
            METRIC_UNITS.get(status.metric, status.metric),
            _number(status.stable),
            _number(status.panic),
            _number(status.target),
            mode,
            _number(status.rps),
            "-" if status.held is None else str(status.held),
            data,
        )
        top = max((*status.history, status.desired, 1))
        history.add_row(f"{status.key} ready replicas, last {len(status.history)}s (top {top}):",
                        Text(sparkline(status.history, top), style="cyan"))
    return Group(*(Text(line) for line in header), table, history)


def restart_lines(restarts: Mapping[str, int]) -> list[str]:
    """A header line naming the parts kapa up had to start again (none while nothing has exited)."""
    restarted = [f"{part} {count}x" for part, count in restarts.items() if count]
    return [f"Restarted:  {', '.join(restarted)} (their logs say why)"] if restarted else []


def change_line(previous: ServiceStatus | None, current: ServiceStatus) -> str | None:
    """A log line when something the reader cares about changed (replicas, panic, staleness), else None."""
    def shape(status: ServiceStatus | None) -> tuple[object, ...] | None:
        if status is None:
            return None
        return (status.desired, status.ready, status.starting, status.draining, status.panic_mode, status.stale,
                status.mode, status.failures)

    if shape(previous) == shape(current):
        return None
    return (
        f"service={current.key} desired={current.desired} ready={current.ready} starting={current.starting} "
        f"draining={current.draining} metric={current.metric} stable={_number(current.stable)} "
        f"panic={_number(current.panic)} "
        f"panic_mode={str(current.panic_mode).lower()} mode={current.mode or '-'} rps={_number(current.rps)} "
        f"held={'-' if current.held is None else current.held} stale={str(current.stale).lower()} "
        f"failures={current.failures}"
    )
