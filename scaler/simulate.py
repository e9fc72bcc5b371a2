"""`kapa simulate`: replay a trace through the very same KPA decision on a virtual clock.

Two kinds of trace, told apart by their CSV header:

* `time_s,concurrency` -- the observed total concurrency during each second; the load does not depend on
  the pods, so this answers "what would the scaler have asked for?".
* `time_s,duration_s` -- one row per request arrival with its service time. The simulator queues requests
  itself: a request waits while no pod is ready (a cold start, held by the activator, which pokes the
  scaler) and, when containerConcurrency is set, while every pod is full. Observed concurrency counts
  waiting and running requests, as the activator and queue-proxy report them; with the rps metric the
  scaler observes arrivals per second instead.

The replay starts with no pod, so its first tick (no data yet) asks for initial-scale pods. Pods asked
for become ready after --startup-delay; pods taken away go at once (a request already running
finishes). After the trace's last request the replay runs on, idle, long enough to show the scale-down
(stable window + max(grace, retention) + scale-down-delay + two ticks), so pod-seconds include that tail.

Every tick (and every poke) calls `scaler.decision.decide` with averages from `scaler.windows`, so a
what-if run exercises exactly the production decision.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import heapq
import json
import math
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kapa import contract
from kapa.log import configure, get_logger
from kapa.services import ServiceKey, ServiceSpec
from scaler.config import AutoscalerConfig, ConfigError, ServiceConfig, parse_duration_s, service_config
from scaler.decision import TICK_INTERVAL_S, Decision, DecisionState, Observation, decide
from scaler.windows import BucketSeries, window_buckets

log = get_logger(__name__)

CONCURRENCY_COLUMNS = ("time_s", "concurrency")
ARRIVAL_COLUMNS = ("time_s", "duration_s")
OUTPUT_COLUMNS = ("time_s", "stable", "panic", "desired", "ready", "panic_mode")
#: Seconds are whole buckets; an event this close to a boundary belongs to the next second.
_TIME_TOLERANCE = 1e-9


class TraceError(ValueError):
    """The trace file cannot be replayed; the message says where and why."""


@dataclass(frozen=True)
class ConcurrencyTrace:
    """Observed total concurrency per second (index = second)."""

    concurrency: tuple[float, ...]


@dataclass(frozen=True)
class ArrivalTrace:
    """Request arrivals as (arrival time s, service time s), sorted by arrival."""

    requests: tuple[tuple[float, float], ...]


Trace = ConcurrencyTrace | ArrivalTrace


@dataclass(frozen=True)
class TickRecord:
    """One decision of the replay: the output CSV's row."""

    time_s: float
    stable: float | None
    panic: float | None
    desired: int
    ready: int
    panic_mode: bool


@dataclass(frozen=True)
class SimulationResult:
    ticks: tuple[TickRecord, ...]
    #: The observed metric per second (concurrency, or arrivals for rps), as the windows saw it.
    load: tuple[float, ...]
    summary: dict[str, object]


def load_trace(path: str | Path) -> Trace:
    """Read a trace CSV; raises TraceError naming the line of any malformed row."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise TraceError(f"cannot read trace {path}: {error}") from None
    if not rows:
        raise TraceError(f"{path}: empty trace")
    header = tuple(cell.strip() for cell in rows[0])
    if header not in (CONCURRENCY_COLUMNS, ARRIVAL_COLUMNS):
        raise TraceError(
            f"{path}: header must be {','.join(CONCURRENCY_COLUMNS)} or {','.join(ARRIVAL_COLUMNS)},"
            f" got {','.join(header)}"
        )
    pairs: list[tuple[float, float]] = []
    for line_number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise TraceError(f"{path}:{line_number}: expected 2 columns, got {len(row)}")
        try:
            time_s, value = float(row[0]), float(row[1])
        except ValueError:
            raise TraceError(f"{path}:{line_number}: not numbers: {','.join(row)}") from None
        if not (math.isfinite(time_s) and math.isfinite(value)) or time_s < 0 or value < 0:
            raise TraceError(f"{path}:{line_number}: values must be finite and non-negative: {','.join(row)}")
        pairs.append((time_s, value))
    if not pairs:
        raise TraceError(f"{path}: no rows after the header")
    if header == ARRIVAL_COLUMNS:
        return ArrivalTrace(tuple(sorted(pairs)))
    seconds = [0.0] * (int(max(time_s for time_s, _ in pairs)) + 1)
    for time_s, value in pairs:
        seconds[int(time_s)] = value
    return ConcurrencyTrace(tuple(seconds))


class _Replay:
    """The virtual world: pods that start after a delay, requests that queue, and the scaler's ticks."""

    def __init__(self, config: ServiceConfig, startup_delay_s: float, tick_s: float) -> None:
        self.config = config
        self.startup_delay_s = startup_delay_s
        self.tick_s = tick_s
        self.stable_buckets = window_buckets(config.stable_window_s)
        self.panic_buckets = window_buckets(config.panic_window_s)
        self.series = BucketSeries()
        self.state = DecisionState.initial()
        self.last: Decision | None = None
        self.ready = 0
        self.starting: deque[float] = deque()  # ready times of pods still starting, earliest first
        self.ticks: list[TickRecord] = []
        self.clock = 0.0
        self.pod_seconds = 0.0
        self.scale_events = 0

    # --- time and pods -------------------------------------------------------------------------------

    def advance_pods(self, until: float) -> None:
        self.pod_seconds += (self.ready + len(self.starting)) * (until - self.clock)
        self.clock = until

    def decide_at(self, now: float, poked: bool = False) -> None:
        complete_seconds = int(now + _TIME_TOLERANCE)
        aggregation = self.config.aggregation
        observation = Observation(
            self.series.average(complete_seconds, self.stable_buckets, aggregation),
            self.series.average(complete_seconds, self.panic_buckets, aggregation),
            self.ready,
            poked,
        )
        decision, self.state = decide(self.config, observation, self.state, now)
        if self.last is not None and decision.desired_pods != self.last.desired_pods:
            self.scale_events += 1
        self.last = decision
        self.apply(decision.desired_pods, now)
        self.ticks.append(
            TickRecord(
                now,
                observation.stable_value,
                observation.panic_value,
                decision.desired_pods,
                self.ready,
                decision.panic_mode,
            )
        )

    def apply(self, desired: int, now: float) -> None:
        """Start pods up to `desired` (ready after the start-up delay) or remove pods at once."""
        total = self.ready + len(self.starting)
        if desired > total:
            if self.startup_delay_s <= 0:
                self.ready += desired - total
            else:
                self.starting.extend([now + self.startup_delay_s] * (desired - total))
        while desired < self.ready + len(self.starting):
            if self.starting:
                self.starting.pop()  # the pod that would be ready last is cancelled first
            else:
                self.ready -= 1

    def idle_tail_s(self) -> float:
        """How long an idle service can take to settle after its last request."""
        config = self.config
        linger_s = max(config.scale_to_zero_grace_period_s, config.scale_to_zero_pod_retention_period_s)
        return config.stable_window_s + linger_s + config.scale_down_delay_s + 2 * self.tick_s

    def wants_zero(self) -> bool:
        return self.last is not None and self.last.desired_pods == 0

    def summary(self, end_s: float) -> dict[str, object]:
        """pod_seconds counts pods from the moment they are asked for (start-up included) until removed;
        max_replicas is the most pods the scaler asked for at once."""
        seconds_in_panic = 0.0
        for record, following in zip(self.ticks, [*self.ticks[1:], None], strict=True):
            if record.panic_mode:
                seconds_in_panic += (following.time_s if following else end_s) - record.time_s
        return {
            "duration_s": round(end_s, 3),
            "decisions": len(self.ticks),
            "pod_seconds": round(self.pod_seconds, 1),
            "max_replicas": max((record.desired for record in self.ticks), default=0),
            "max_ready": max((record.ready for record in self.ticks), default=0),
            "seconds_in_panic": round(seconds_in_panic, 1),
            "scale_events": self.scale_events,
        }


def simulate(
    config: ServiceConfig, trace: Trace, startup_delay_s: float = 2.0, tick_s: float = TICK_INTERVAL_S
) -> SimulationResult:
    """Replay `trace` with `config`; pure apart from CPU time."""
    if tick_s <= 0:
        raise ValueError("tick must be positive")
    if startup_delay_s < 0:
        raise ValueError("start-up delay must not be negative")
    replay = _Replay(config, startup_delay_s, tick_s)
    if isinstance(trace, ConcurrencyTrace):
        if config.metric == contract.METRIC_RPS:
            raise TraceError("the rps metric needs an arrival trace (time_s,duration_s), not observed concurrency")
        summary = _replay_concurrency(replay, trace)
    else:
        summary = _replay_arrivals(replay, trace)
    return SimulationResult(tuple(replay.ticks), tuple(replay.series.values()), summary)


def _replay_concurrency(replay: _Replay, trace: ConcurrencyTrace) -> dict[str, object]:
    """The load is given; only pods and decisions move. A second with load while the scaler wants zero
    means requests are held at the activator, which pokes at the start of that second."""
    trace_end_s = float(len(trace.concurrency))
    end_s = trace_end_s + replay.idle_tail_s()
    # The idle tail observes nothing, which here is zero traffic: the pods report zero.
    load = (*trace.concurrency, *[0.0] * math.ceil(end_s - trace_end_s))
    tick_index = 0
    second = 0
    while True:
        next_tick = tick_index * replay.tick_s
        next_ready = replay.starting[0] if replay.starting else math.inf
        next_second = float(second) if second < len(load) else math.inf
        now = min(next_tick, next_ready, next_second)
        if now > end_s:
            break
        replay.advance_pods(now)
        if next_ready == now:
            replay.starting.popleft()
            replay.ready += 1
        elif next_tick == now:
            replay.decide_at(now)
            tick_index += 1
        else:
            if load[second] > 0 and replay.wants_zero():
                replay.decide_at(now, poked=True)
            replay.series.append(load[second])
            second += 1
    replay.advance_pods(end_s)
    return {"trace_end_s": trace_end_s, **replay.summary(end_s)}


def _replay_arrivals(replay: _Replay, trace: ArrivalTrace) -> dict[str, object]:
    """Event-driven queueing model; concurrency per second is the time-weighted count of requests that
    are waiting or running, as the activator and queue-proxies would report it."""
    requests = trace.requests
    capacity_per_pod = replay.config.container_concurrency
    waiting: deque[tuple[float, float, bool]] = deque()  # (arrival, duration, arrived while no pod was ready)
    running: list[float] = []  # end times (heap)
    delays: list[float] = []
    cold_start_waits = 0
    in_system = 0
    observe_rps = replay.config.metric == contract.METRIC_RPS
    arrivals_this_second = 0
    bucket_start, bucket_integral = 0.0, 0.0
    next_request = 0
    tick_index = 0
    end_s: float | None = None
    trace_end_s = 0.0

    def account(until: float) -> None:
        """Integrate the number of requests in the system up to `until`, closing whole seconds."""
        nonlocal bucket_start, bucket_integral, arrivals_this_second
        second_end = len(replay.series) + 1.0
        while until >= second_end - _TIME_TOLERANCE:
            bucket_integral += in_system * (second_end - bucket_start)
            replay.series.append(float(arrivals_this_second) if observe_rps else bucket_integral)
            bucket_start, bucket_integral, arrivals_this_second = second_end, 0.0, 0
            second_end += 1.0
        bucket_integral += in_system * (until - bucket_start)
        bucket_start = until
        replay.advance_pods(until)

    def start_waiting(now: float) -> None:
        nonlocal cold_start_waits
        if replay.ready == 0:
            return
        limit = replay.ready * capacity_per_pod if capacity_per_pod > 0 else math.inf
        while waiting and len(running) < limit:
            arrival, duration, cold = waiting.popleft()
            delays.append(now - arrival)
            cold_start_waits += cold
            heapq.heappush(running, now + duration)

    while True:
        next_done = running[0] if running else math.inf
        next_ready = replay.starting[0] if replay.starting else math.inf
        next_tick = tick_index * replay.tick_s
        next_arrival = requests[next_request][0] if next_request < len(requests) else math.inf
        if end_s is None and next_arrival == math.inf and not running and not waiting:
            trace_end_s = float(math.ceil(replay.clock - _TIME_TOLERANCE))
            end_s = trace_end_s + replay.idle_tail_s()
        if end_s is not None and next_tick > end_s:
            break
        now = min(next_done, next_ready, next_tick, next_arrival)
        account(now)
        if next_done == now:
            heapq.heappop(running)
            in_system -= 1
            start_waiting(now)
        elif next_ready == now:
            replay.starting.popleft()
            replay.ready += 1
            start_waiting(now)
        elif next_tick == now:
            replay.decide_at(now)
            tick_index += 1
            start_waiting(now)
        else:
            arrival, duration = requests[next_request]
            next_request += 1
            waiting.append((arrival, duration, replay.ready == 0))
            in_system += 1
            arrivals_this_second += 1
            if replay.ready == 0 and replay.wants_zero():
                replay.decide_at(now, poked=True)
            start_waiting(now)
    assert end_s is not None
    account(end_s)
    summary = {"trace_end_s": trace_end_s, **replay.summary(end_s)}
    delays.sort()
    summary.update(
        requests=len(requests),
        queueing_delay_p50_s=round(_percentile(delays, 0.50), 3),
        queueing_delay_p99_s=round(_percentile(delays, 0.99), 3),
        queueing_delay_max_s=round(delays[-1], 3) if delays else 0.0,
        requests_waited_for_cold_start=cold_start_waits,
    )
    return summary


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def write_ticks_csv(path: str | Path, ticks: Sequence[TickRecord]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(OUTPUT_COLUMNS)
        for record in ticks:
            writer.writerow(
                [
                    f"{record.time_s:g}",
                    "" if record.stable is None else f"{record.stable:.4f}",
                    "" if record.panic is None else f"{record.panic:.4f}",
                    record.desired,
                    record.ready,
                    int(record.panic_mode),
                ]
            )


def plot(path: str | Path, result: SimulationResult, title: str, metric: str) -> None:
    """Load (the per-second metric and its window averages) above replicas asked for and ready."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    figure, (load_axes, pods_axes) = pyplot.subplots(2, 1, sharex=True, figsize=(12, 6.5), height_ratios=(1, 1))
    times = [record.time_s / 60 for record in result.ticks]
    load_axes.plot(
        [second / 60 for second in range(len(result.load))], result.load, lw=0.5, color="0.6", label=f"{metric} (1 s)"
    )
    load_axes.plot(
        times,
        [record.stable or 0.0 for record in result.ticks],
        lw=1.2,
        color="tab:blue",
        label="stable window average",
    )
    load_axes.plot(
        times,
        [record.panic or 0.0 for record in result.ticks],
        lw=0.8,
        color="tab:orange",
        alpha=0.7,
        label="panic window average",
    )
    load_axes.set_ylabel("requests per second" if metric == contract.METRIC_RPS else "concurrent requests")
    load_axes.legend(loc="upper right", fontsize="small")
    load_axes.set_title(title, fontsize="medium")
    pods_axes.step(
        times, [record.desired for record in result.ticks], where="post", lw=1.2, color="tab:red", label="desired"
    )
    pods_axes.step(
        times, [record.ready for record in result.ticks], where="post", lw=1.0, color="tab:green", label="ready"
    )
    top = max((record.desired for record in result.ticks), default=1) + 1
    pods_axes.fill_between(
        times,
        0,
        top,
        where=[record.panic_mode for record in result.ticks],
        step="post",
        color="tab:red",
        alpha=0.12,
        label="panic mode",
    )
    pods_axes.set_ylim(0, top)
    pods_axes.set_ylabel("pods")
    pods_axes.set_xlabel("minutes")
    pods_axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kapa simulate", description="Replay a trace through the KPA decision on a virtual clock."
    )
    parser.add_argument("--trace", required=True, help="CSV with time_s,concurrency or time_s,duration_s")
    parser.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a service annotation, e.g. autoscaling.knative.dev/target=10 (repeatable)",
    )
    parser.add_argument("--config", help="config-autoscaler YAML: a flat mapping of keys or a ConfigMap")
    parser.add_argument(
        "--startup-delay", default="2s", help="time from asking for a pod to its being ready (default 2s)"
    )
    parser.add_argument(
        "--tick", default=f"{TICK_INTERVAL_S:g}s", help=f"decision interval (default {TICK_INTERVAL_S:g}s)"
    )
    parser.add_argument("--out", help="write one CSV row per decision: " + ",".join(OUTPUT_COLUMNS))
    parser.add_argument("--plot", help="draw load and replicas over time into this PNG")
    return parser


def main(argv: list[str]) -> int:
    configure()
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        startup_delay_s = parse_duration_s(args.startup_delay)
        tick_s = parse_duration_s(args.tick)
    except ValueError as error:
        parser.error(str(error))
    if startup_delay_s < 0 or tick_s <= 0:
        parser.error("--startup-delay must be >= 0 and --tick > 0")
    annotations: dict[str, str] = {}
    for item in args.annotation:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--annotation expects KEY=VALUE, got {item!r}")
        name = name.strip()
        known = [contract.knative_annotation(k) for k in contract.KNATIVE_ANNOTATION_KEYS] + [
            contract.ANNOTATION_CONTAINER_CONCURRENCY, contract.ANNOTATION_TIMEOUT_SECONDS]
        if name not in known:  # the scaler ignores other annotations: the flag would silently do nothing
            prefixed = contract.KNATIVE_ANNOTATION_PREFIX + name
            close = [prefixed] if prefixed in known else difflib.get_close_matches(name, known, n=1)
            parser.error(f"--annotation {name!r} is no autoscaling annotation"
                         + (f"; did you mean {close[0]!r}?" if close else ""))
        annotations[name] = value.strip()

    errors: list[ConfigError] = []
    global_config = AutoscalerConfig.default()
    if args.config:
        global_config, errors = AutoscalerConfig.load_file(args.config)
    key = ServiceKey("simulate", Path(args.trace).stem or "trace")
    config, service_errors = service_config(global_config, ServiceSpec(key, annotations))
    for error in [*errors, *service_errors]:
        log.warning(
            "invalid autoscaling setting, using the default", key=error.key, service=error.service, error=error.message
        )
    try:
        trace = load_trace(args.trace)
    except TraceError as error:
        print(f"kapa simulate: {error}", file=sys.stderr)
        return 2

    try:
        result = simulate(config, trace, startup_delay_s, tick_s)
    except TraceError as error:
        print(f"kapa simulate: {error}", file=sys.stderr)
        return 2
    if args.out:
        write_ticks_csv(args.out, result.ticks)
    if args.plot:
        settings = ", ".join(f"{name}={value}" for name, value in annotations.items()) or "defaults"
        plot(
            args.plot,
            result,
            f"{Path(args.trace).name} ({settings}; target {config.target:g}/pod, start-up {startup_delay_s:g}s)",
            config.metric,
        )
    print(json.dumps({"trace": str(args.trace), "target": config.target, **result.summary}, indent=2))
    return 0
