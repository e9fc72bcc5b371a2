"""`kapa simulate`: replay a trace through the very same decision on a virtual clock.

Traces (`scaler/traces.py`), told apart by their CSV header, or generated with `--generate SHAPE --seed N`:

* `time_s,concurrency` -- the observed total concurrency during each second; the load does not depend on
  the pods, so this answers "what would the scaler have asked for?".
* `time_s,duration_s` -- one row per request arrival with its service time. The simulator queues requests
  itself: a request waits while no pod is ready (a cold start, held by the activator, which pokes the
  scaler) and, when containerConcurrency is set, while every pod is full. Observed concurrency counts
  waiting and running requests, as the activator and queue-proxy report them; with the rps metric the
  scaler observes arrivals per second instead.

The replay starts with no pod, so its first tick (no data yet) asks for initial-scale pods. Pods asked
for become ready after the start-up delay: a constant (`--startup-delay 2s`) or drawn per pod from a
lognormal distribution (`--startup-delay lognormal:median=2s,p99=6s`, seeded by `--seed`); pods taken away
go at once (a request already running finishes). After the trace's last request the replay runs on, idle,
long enough to show Knative's scale-down (stable window + max(grace, retention) + scale-down-delay + two
ticks), so pod-seconds include that tail.

Every tick (and every poke) calls `scaler.policy.decide_with_policy` with averages from `scaler.windows`,
so a what-if run exercises exactly the production decision: Knative's rules, or, for a service annotated
`kapa.dev/scaling-policy: predictive`, those rules adjusted by the predictive policy, which learns from the
per-second concurrency the replay has produced so far, as the live scaler does from Prometheus.
`--compare` replays the trace through both, with the same start-up delays, and prints their figures side by
side: pod-seconds, requests delayed by a cold start, queueing delay p50/p99/max, scale events.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import difflib
import heapq
import json
import math
import random
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kapa.core import contract
from kapa.core.log import configure, get_logger
from kapa.core.services import ServiceKey, ServiceSpec
from kapa.core.settings import (
    AutoscalerConfig,
    ConfigError,
    ServiceConfig,
    parse_duration_s,
    service_config,
)
from scaler.config_file import load_config_file
from scaler.decision import TICK_INTERVAL_S, Decision, DecisionState, Observation
from scaler.policy import HISTORY_S, LoadHistory, decide_with_policy
from scaler.traces import (
    DEFAULT_GENERATED_DURATION_S,
    SHAPES,
    ArrivalTrace,
    ConcurrencyTrace,
    Trace,
    TraceError,
    generate,
    load_trace,
    write_arrivals,
)
from scaler.windows import BucketSeries, window_buckets

log = get_logger(__name__)

OUTPUT_COLUMNS = ("time_s", "stable", "panic", "desired", "ready", "panic_mode")
#: The policies `--compare` replays, in the order it prints them.
COMPARED_POLICIES = (contract.SCALING_POLICY_KNATIVE, contract.SCALING_POLICY_PREDICTIVE)
#: Seconds are whole buckets; an event this close to a boundary belongs to the next second.
_TIME_TOLERANCE = 1e-9
#: The 99th percentile of the standard normal distribution.
_Z99 = 2.3263478740408408
_HISTORY_BUCKETS = window_buckets(HISTORY_S)


@dataclass(frozen=True)
class StartupDelay:
    """Time from asking for a pod to its being ready: lognormal with this median and 99th percentile, or
    the constant median when both are equal."""

    median_s: float
    p99_s: float

    @classmethod
    def constant(cls, seconds: float) -> StartupDelay:
        if seconds < 0:
            raise ValueError("start-up delay must not be negative")
        return cls(seconds, seconds)

    @classmethod
    def parse(cls, text: str) -> StartupDelay:
        """`2s` (a constant) or `lognormal:median=2s,p99=6s`; ValueError says what is wrong."""
        kind, sep, parameters = text.partition(":")
        if not sep:
            return cls.constant(parse_duration_s(text))
        usage = "use a duration (2s) or lognormal:median=2s,p99=6s"
        if kind.strip() != "lognormal":
            raise ValueError(f"unknown start-up distribution {kind.strip()!r}: {usage}")
        values: dict[str, float] = {}
        for part in parameters.split(","):
            name, equals, value = part.partition("=")
            if not equals or name.strip() not in ("median", "p99") or name.strip() in values:
                raise ValueError(f"bad start-up distribution {text!r}: {usage}")
            values[name.strip()] = parse_duration_s(value)
        if set(values) != {"median", "p99"}:
            raise ValueError(f"bad start-up distribution {text!r}: {usage}")
        if not 0 < values["median"] <= values["p99"]:
            raise ValueError(f"bad start-up distribution {text!r}: needs 0 < median <= p99")
        return cls(values["median"], values["p99"])

    def sample(self, rng: random.Random) -> float:
        if self.p99_s == self.median_s:
            return self.median_s
        return rng.lognormvariate(math.log(self.median_s), math.log(self.p99_s / self.median_s) / _Z99)

    def __str__(self) -> str:
        if self.p99_s == self.median_s:
            return f"{self.median_s:g}s"
        return f"lognormal median {self.median_s:g}s, p99 {self.p99_s:g}s"


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


class _Replay:
    """The virtual world: pods that start after a delay, requests that queue, and the scaler's ticks."""

    def __init__(self, config: ServiceConfig, startup_delay: StartupDelay, tick_s: float, seed: int) -> None:
        self.config = config
        self.startup_delay = startup_delay
        self.seed = seed
        self.tick_s = tick_s
        self.stable_buckets = window_buckets(config.stable_window_s)
        self.panic_buckets = window_buckets(config.panic_window_s)
        self.series = BucketSeries()
        #: Requests in flight per second, which the predictive policy learns from whatever the metric.
        self.concurrency = BucketSeries() if config.metric == contract.METRIC_RPS else self.series
        self.learns = config.scaling_policy == contract.SCALING_POLICY_PREDICTIVE
        self.state = DecisionState.initial()
        self.last: Decision | None = None
        self.ready = 0
        self.starting: deque[float] = deque()  # ready times of pods still starting, sorted, earliest first
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
        history = LoadHistory(1.0, self.concurrency.recent(complete_seconds, _HISTORY_BUCKETS)) if self.learns else None
        decision, self.state = decide_with_policy(self.config, observation, history, self.state, now)
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
        for pod in range(total, desired):
            # Drawn from (seed, when, which pod): replays that ask for a pod at the same moment (a cold start
            # under either policy) wait the same, so a comparison measures the policies, not the dice.
            delay_s = self.startup_delay.sample(random.Random(f"{self.seed}:{now!r}:{pod}"))
            if delay_s <= 0:
                self.ready += 1
            else:
                bisect.insort(self.starting, now + delay_s)
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
            "scaling_policy": self.config.scaling_policy,
            "duration_s": round(end_s, 3),
            "decisions": len(self.ticks),
            "pod_seconds": round(self.pod_seconds, 1),
            "max_replicas": max((record.desired for record in self.ticks), default=0),
            "max_ready": max((record.ready for record in self.ticks), default=0),
            "seconds_in_panic": round(seconds_in_panic, 1),
            "scale_events": self.scale_events,
        }


def simulate(
    config: ServiceConfig,
    trace: Trace,
    startup_delay_s: float | StartupDelay = 2.0,
    tick_s: float = TICK_INTERVAL_S,
    seed: int = 0,
) -> SimulationResult:
    """Replay `trace` with `config` under its scaling policy; pure apart from CPU time. A number for the
    start-up delay is a constant; `seed` seeds the draws from a StartupDelay distribution."""
    if tick_s <= 0:
        raise ValueError("tick must be positive")
    startup = startup_delay_s if isinstance(startup_delay_s, StartupDelay) else StartupDelay.constant(startup_delay_s)
    replay = _Replay(config, startup, tick_s, seed)
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
            if observe_rps:
                replay.concurrency.append(bucket_integral)
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


def compare(
    config: ServiceConfig,
    trace: Trace,
    startup_delay_s: float | StartupDelay = 2.0,
    tick_s: float = TICK_INTERVAL_S,
    seed: int = 0,
) -> dict[str, SimulationResult]:
    """Replay `trace` once per policy of COMPARED_POLICIES, everything else (and the start-up delays drawn)
    the same, keyed by policy."""
    return {
        policy: simulate(dataclasses.replace(config, scaling_policy=policy), trace, startup_delay_s, tick_s, seed)
        for policy in COMPARED_POLICIES
    }


def write_ticks_csv(path: str | Path, runs: Mapping[str, Sequence[TickRecord]]) -> None:
    """One row per decision: OUTPUT_COLUMNS for one run; with several (--compare), a first column names
    each row's policy."""
    labelled = len(runs) > 1
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("policy", *OUTPUT_COLUMNS) if labelled else OUTPUT_COLUMNS)
        for policy, ticks in runs.items():
            for record in ticks:
                row = [
                    f"{record.time_s:g}",
                    "" if record.stable is None else f"{record.stable:.4f}",
                    "" if record.panic is None else f"{record.panic:.4f}",
                    record.desired,
                    record.ready,
                    int(record.panic_mode),
                ]
                writer.writerow([policy, *row] if labelled else row)


def plot(path: str | Path, runs: Mapping[str, SimulationResult], title: str, metric: str) -> None:
    """Load (the per-second metric and the first run's window averages) above, for each run (policy), the
    replicas asked for and ready."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(
        1 + len(runs), 1, sharex=True, figsize=(12, 3.25 * (1 + len(runs))), height_ratios=(1,) * (1 + len(runs))
    )
    load_axes, *pods_axes_per_run = axes
    first = next(iter(runs.values()))
    times = [record.time_s / 60 for record in first.ticks]
    load_axes.plot(
        [second / 60 for second in range(len(first.load))], first.load, lw=0.5, color="0.6", label=f"{metric} (1 s)"
    )
    load_axes.plot(
        times, [record.stable or 0.0 for record in first.ticks], lw=1.2, color="tab:blue", label="stable window average"
    )
    load_axes.plot(
        times,
        [record.panic or 0.0 for record in first.ticks],
        lw=0.8,
        color="tab:orange",
        alpha=0.7,
        label="panic window average",
    )
    load_axes.set_ylabel("requests per second" if metric == contract.METRIC_RPS else "concurrent requests")
    load_axes.legend(loc="upper right", fontsize="small")
    load_axes.set_title(title, fontsize="medium")
    top = max((record.desired for result in runs.values() for record in result.ticks), default=1) + 1
    for pods_axes, (policy, result) in zip(pods_axes_per_run, runs.items(), strict=True):
        times = [record.time_s / 60 for record in result.ticks]
        summary = result.summary
        pods_axes.step(
            times, [record.desired for record in result.ticks], where="post", lw=1.2, color="tab:red", label="desired"
        )
        pods_axes.step(
            times, [record.ready for record in result.ticks], where="post", lw=1.0, color="tab:green", label="ready"
        )
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
        figures = f"{summary['pod_seconds']:g} pod-s"
        if "requests_waited_for_cold_start" in summary:
            figures += f", {summary['requests_waited_for_cold_start']} requests waited for a cold start"
        pods_axes.set_title(f"{policy}: {figures}", fontsize="small", loc="left")
        pods_axes.legend(loc="upper right", fontsize="small")
    pods_axes_per_run[-1].set_xlabel("minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


#: The annotations `--annotation` accepts: those the scaler reads.
_KNOWN_ANNOTATIONS = (
    *(contract.knative_annotation(key) for key in contract.KNATIVE_ANNOTATION_KEYS),
    contract.ANNOTATION_CONTAINER_CONCURRENCY,
    contract.ANNOTATION_TIMEOUT_SECONDS,
    contract.ANNOTATION_SCALING_POLICY,
    contract.ANNOTATION_PREWARM_LEAD,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kapa simulate", description="Replay a trace through the scaler's decision on a virtual clock."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", help="CSV with time_s,concurrency or time_s,duration_s")
    source.add_argument(
        "--generate", choices=tuple(SHAPES), metavar="SHAPE",
        help=f"replay a generated arrival trace of this shape ({', '.join(SHAPES)}; see scaler/traces.py)",
    )
    parser.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a service annotation, e.g. autoscaling.knative.dev/target=10 or kapa.dev/scaling-policy=predictive "
        "(repeatable)",
    )
    parser.add_argument("--config", help="config-autoscaler YAML: a flat mapping of keys or a ConfigMap")
    parser.add_argument(
        "--startup-delay",
        default="2s",
        help="time from asking for a pod to its being ready: a duration, or lognormal:median=2s,p99=6s (default 2s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of --generate and of the start-up draws (default 1)")
    parser.add_argument(
        "--duration", default=f"{DEFAULT_GENERATED_DURATION_S:g}s", help="length of a --generate trace (default 1h)"
    )
    parser.add_argument("--save-trace", metavar="CSV", help="write the --generate trace here (time_s,duration_s)")
    parser.add_argument(
        "--compare", action="store_true",
        help="replay through Knative's rules and the predictive policy side by side",
    )
    parser.add_argument(
        "--tick", default=f"{TICK_INTERVAL_S:g}s", help=f"decision interval (default {TICK_INTERVAL_S:g}s)"
    )
    parser.add_argument("--out", help="write one CSV row per decision: " + ",".join(OUTPUT_COLUMNS))
    parser.add_argument("--plot", help="draw load and replicas over time into this PNG")
    return parser


def _annotation(parser: argparse.ArgumentParser, item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
        parser.error(f"--annotation expects KEY=VALUE, got {item!r}")
    name = name.strip()
    if name not in _KNOWN_ANNOTATIONS:  # the scaler ignores other annotations: the flag would silently do nothing
        prefixed = contract.KNATIVE_ANNOTATION_PREFIX + name
        close = [prefixed] if prefixed in _KNOWN_ANNOTATIONS else difflib.get_close_matches(name, _KNOWN_ANNOTATIONS, n=1)
        parser.error(f"--annotation {name!r} is no autoscaling annotation"
                     + (f"; did you mean {close[0]!r}?" if close else ""))
    return name, value.strip()


def main(argv: list[str]) -> int:
    configure()
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        startup = StartupDelay.parse(args.startup_delay)
        tick_s = parse_duration_s(args.tick)
        duration_s = parse_duration_s(args.duration)
    except ValueError as error:
        parser.error(str(error))
    if tick_s <= 0 or duration_s <= 0:
        parser.error("--tick and --duration must be positive")
    if args.save_trace and not args.generate:
        parser.error("--save-trace writes a --generate trace")
    annotations = dict(_annotation(parser, item) for item in args.annotation)

    errors: list[ConfigError] = []
    global_config = AutoscalerConfig.default()
    if args.config:
        global_config, errors = load_config_file(args.config)
    name = f"{args.generate}-{args.seed}" if args.generate else Path(args.trace).stem or "trace"
    config, service_errors = service_config(global_config, ServiceSpec(ServiceKey("simulate", name), annotations))
    for error in [*errors, *service_errors]:
        log.warning(
            "invalid autoscaling setting, using the default", key=error.key, service=error.service, error=error.message
        )
    if args.generate:
        trace: Trace = generate(args.generate, args.seed, duration_s)
        if args.save_trace:
            write_arrivals(args.save_trace, trace)
        source = f"--generate {args.generate} --seed {args.seed}"
    else:
        try:
            trace = load_trace(args.trace)
        except TraceError as error:
            print(f"kapa simulate: {error}", file=sys.stderr)
            return 2
        source = str(args.trace)

    try:
        runs = (compare(config, trace, startup, tick_s, args.seed) if args.compare
                else {config.scaling_policy: simulate(config, trace, startup, tick_s, args.seed)})
    except TraceError as error:
        print(f"kapa simulate: {error}", file=sys.stderr)
        return 2
    if args.out:
        write_ticks_csv(args.out, {policy: result.ticks for policy, result in runs.items()})
    if args.plot:
        settings = ", ".join(f"{name}={value}" for name, value in annotations.items()) or "defaults"
        title = f"{Path(args.trace).name if args.trace else source} ({settings}; target {config.target:g}/pod, start-up {startup})"
        plot(args.plot, runs, title, config.metric)
    heading = {"trace": source, "target": config.target, "startup_delay": str(startup)}
    if args.compare:
        print(json.dumps({**heading, **{policy: result.summary for policy, result in runs.items()}}, indent=2))
    else:
        print(json.dumps({**heading, **next(iter(runs.values())).summary}, indent=2))
    return 0
