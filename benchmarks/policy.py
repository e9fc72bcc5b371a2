"""The predictive scaling policy against Knative's rules, on generated and real arrival traces.

Each trace is replayed by `kapa simulate`'s replay (`scaler.simulate.compare`) twice, once per policy, with
the same pod start-up delays (drawn from a lognormal distribution, median 2 s, p99 6 s, by default), and
the figures of the two are printed side by side: pod-seconds (start-up included), requests that waited
for a cold start (arrived while no pod was ready), queueing delay p99 and max, scale events. Generated
shapes (`scaler/traces.py`) are replayed for several seeds and summed; the Azure LLM conversation trace
(steady) once.

The issue's goals, printed against each trace, not asserted: on sparse and bursty traces at least 40 %
fewer pod-seconds with no more cold-start-delayed requests (or half of them at no more pod-seconds); on
steady traces within 2 % of Knative's pod-seconds.

    .venv/bin/python -m benchmarks.policy [--seeds 5] [--startup-delay lognormal:median=2s,p99=6s]
                                          [--annotation KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kapa.core import contract
from kapa.core.services import ServiceKey, ServiceSpec
from kapa.core.settings import AutoscalerConfig, service_config
from scaler.simulate import StartupDelay, compare
from scaler.traces import SHAPES, Trace, generate, load_trace

AZURE_TRACE = Path(__file__).resolve().parents[1] / "examples" / "traces" / "azure-llm-2023-conv-arrivals.csv"
#: The traces the goals call sparse or bursty, and steady.
SPARSE_OR_BURSTY = ("periodic", "bursty", "sparse")
STEADY = ("diurnal", "steady", "azure-llm-conv")
KNATIVE, PREDICTIVE = contract.SCALING_POLICY_KNATIVE, contract.SCALING_POLICY_PREDICTIVE


@dataclass
class Totals:
    """One policy's figures summed over a trace's replays (delays: the worst replay's)."""

    pod_seconds: float = 0.0
    cold_start_requests: int = 0
    requests: int = 0
    delay_p99_s: float = 0.0
    delay_max_s: float = 0.0
    scale_events: int = 0

    def add(self, summary: Mapping[str, object]) -> None:
        self.pod_seconds += float(summary["pod_seconds"])  # type: ignore[arg-type]
        self.cold_start_requests += int(summary["requests_waited_for_cold_start"])  # type: ignore[call-overload]
        self.requests += int(summary["requests"])  # type: ignore[call-overload]
        self.delay_p99_s = max(self.delay_p99_s, float(summary["queueing_delay_p99_s"]))  # type: ignore[arg-type]
        self.delay_max_s = max(self.delay_max_s, float(summary["queueing_delay_max_s"]))  # type: ignore[arg-type]
        self.scale_events += int(summary["scale_events"])  # type: ignore[call-overload]


def _verdict(name: str, knative: Totals, predictive: Totals) -> str:
    saved = 1.0 - predictive.pod_seconds / knative.pod_seconds
    if name in STEADY:
        return f"goal within 2 %: {'met' if abs(saved) <= 0.02 else 'MISSED'}"
    fewer_pods = saved >= 0.40 and predictive.cold_start_requests <= knative.cold_start_requests
    fewer_colds = (predictive.cold_start_requests * 2 <= knative.cold_start_requests
                   and predictive.pod_seconds <= knative.pod_seconds)
    if fewer_pods or fewer_colds:
        return "goal met: " + " and ".join(
            part for part, met in (("40 % fewer pod-s, no more cold starts", fewer_pods),
                                   ("half the cold starts, no more pod-s", fewer_colds)) if met)
    return "goal MISSED"


def _traces(seeds: int, hours: float) -> list[tuple[str, list[Trace]]]:
    traces: list[tuple[str, list[Trace]]] = [
        (shape, [generate(shape, seed, hours * 3600.0) for seed in range(1, seeds + 1)]) for shape in SHAPES
    ]
    traces.append(("azure-llm-conv", [load_trace(AZURE_TRACE)]))
    return traces


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.policy")
    parser.add_argument("--seeds", type=int, default=5, help="replays per generated shape (seeds 1..N)")
    parser.add_argument("--hours", type=float, default=3.0, help="length of each generated trace (default 3)")
    parser.add_argument("--startup-delay", default="lognormal:median=2s,p99=6s")
    parser.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    startup = StartupDelay.parse(args.startup_delay)
    annotations = dict(item.split("=", 1) for item in args.annotation)
    config, errors = service_config(AutoscalerConfig.default(), ServiceSpec(ServiceKey("bench", "policy"), annotations))
    if errors:
        parser.error("; ".join(str(error) for error in errors))

    print(f"predictive policy vs Knative's rules; pod start-up {startup}; generated shapes x {args.seeds} seeds, "
          f"{args.hours:g} h each")
    print(f"{'trace':<15} {'policy':<11} {'pod-s':>9} {'change':>8} {'cold-start req':>15} {'of req':>7} "
          f"{'p99 s':>6} {'max s':>6} {'scale ev':>9}")
    started = time.perf_counter()
    for name, traces in _traces(args.seeds, args.hours):
        totals = {KNATIVE: Totals(), PREDICTIVE: Totals()}
        for seed, trace in enumerate(traces, start=1):
            for policy, result in compare(config, trace, startup, seed=seed).items():
                totals[policy].add(result.summary)
        knative = totals[KNATIVE]
        for policy, total in totals.items():
            change = f"{total.pod_seconds / knative.pod_seconds - 1.0:+.1%}" if policy == PREDICTIVE else ""
            print(f"{name if policy == KNATIVE else '':<15} {policy:<11} {total.pod_seconds:>9.0f} {change:>8} "
                  f"{total.cold_start_requests:>15} {total.requests:>7} {total.delay_p99_s:>6.2f} "
                  f"{total.delay_max_s:>6.2f} {total.scale_events:>9}")
        print(f"{'':<15} {_verdict(name, knative, totals[PREDICTIVE])}")
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
