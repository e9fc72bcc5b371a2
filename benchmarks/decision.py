"""Decision throughput: one scaler tick deciding 10,000 services, against the issue's goal of 200 ms.

Services get varied configurations (containerConcurrency, targets, rps, scale-down-delay, bounds,
activation-scale, scale to zero) and a synthetic Prometheus answer per tick: loads that drift, burst into
panic, go idle and come back, with occasional missing data and pokes. Each tick builds the observations
from that answer and calls the pure `decide` for every service, carrying state, as the scaler's loop does.

    python -m benchmarks.decision [--services 10000] [--ticks 40]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from kapa.core.contract import ANNOTATION_CONTAINER_CONCURRENCY, knative_annotation
from kapa.core.services import ServiceKey, ServiceSpec
from kapa.core.settings import AutoscalerConfig, ServiceConfig, service_config
from scaler.decision import TICK_INTERVAL_S, DecisionState, Observation, decide

GOAL_MS = 200.0

_ANNOTATION_SETS: tuple[dict[str, str], ...] = (
    {},
    {ANNOTATION_CONTAINER_CONCURRENCY: "10"},
    {knative_annotation("target"): "10"},
    {knative_annotation("metric"): "rps", knative_annotation("target"): "50"},
    {knative_annotation("scale-down-delay"): "30s"},
    {knative_annotation("min-scale"): "1", knative_annotation("max-scale"): "3"},
    {knative_annotation("activation-scale"): "3", knative_annotation("target-burst-capacity"): "0"},
    {knative_annotation("window"): "20s", knative_annotation("scale-to-zero-pod-retention-period"): "1m"},
)


def _services(count: int) -> list[ServiceConfig]:
    global_config = AutoscalerConfig.default()
    configs = []
    for index in range(count):
        spec = ServiceSpec(ServiceKey("bench", f"svc-{index}"), _ANNOTATION_SETS[index % len(_ANNOTATION_SETS)])
        config, errors = service_config(global_config, spec)
        assert not errors, errors
        configs.append(config)
    return configs


def _prometheus_answers(count: int, ticks: int, seed: int) -> list[list[tuple[float | None, float | None, bool]]]:
    """Per tick, per service: (stable, panic, poked), from a random walk with bursts, idling and gaps."""
    rng = random.Random(seed)
    levels = [rng.choice((0.0, 1.0, 5.0, 30.0, 200.0)) for _ in range(count)]
    answers = []
    for _ in range(ticks):
        tick = []
        for index in range(count):
            level = levels[index]
            roll = rng.random()
            if roll < 0.01:
                level = 0.0
            elif roll < 0.03:
                level = level * 4 + 10  # a burst: panic material
            else:
                level = max(0.0, level * rng.uniform(0.9, 1.1))
            levels[index] = level
            if rng.random() < 0.005:
                tick.append((None, None, False))  # Prometheus had no series
            else:
                tick.append(
                    (
                        level * rng.uniform(0.95, 1.05),
                        level * rng.uniform(0.7, 1.6),
                        level == 0.0 and rng.random() < 0.05,
                    )
                )
        answers.append(tick)
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decision")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    configs = _services(args.services)
    answers = _prometheus_answers(args.services, args.ticks, args.seed)
    states = [DecisionState.initial()] * args.services
    ready = [1] * args.services
    durations_ms = []
    desired_total = 0
    for tick_index, answer in enumerate(answers):
        now = tick_index * TICK_INTERVAL_S
        started = time.perf_counter()
        for index in range(args.services):
            stable, panic, poked = answer[index]
            decision, states[index] = decide(
                configs[index], Observation(stable, panic, ready[index], poked), states[index], now
            )
            ready[index] = decision.desired_pods  # pods follow at once: the worst case for state churn
        durations_ms.append((time.perf_counter() - started) * 1000.0)
        desired_total = sum(ready)

    median_ms = statistics.median(durations_ms)
    p90_ms = statistics.quantiles(durations_ms, n=10)[-1] if len(durations_ms) >= 2 else median_ms
    per_decision_us = median_ms * 1000.0 / args.services
    budget = f"{'met' if median_ms <= GOAL_MS else 'MISSED'} ({median_ms / GOAL_MS:.2f} of the budget)"
    print(f"decision tick: {args.services:,} services x {args.ticks} ticks")
    print("  (observations built from a synthetic Prometheus answer, then decide() per service)")
    print(f"  median {median_ms:.1f} ms, p90 {p90_ms:.1f} ms, min {min(durations_ms):.1f} ms per tick")
    print(f"  {per_decision_us:.1f} us per decision; goal {GOAL_MS:.0f} ms on one core: {budget}")
    print(f"  (pods desired in total at the last tick: {desired_total:,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
