"""The predictive scaling policy: Knative's decision, adjusted by what a service's recent silences predict.

Opt in per service with `kapa.dev/scaling-policy: predictive` (and `kapa.dev/prewarm-lead`, default 10 s:
how long before an expected burst a pod is asked for, its start-up plus a margin). Without it nothing here
changes a decision: the KPA (`scaler.decision`) decides alone.

Why. After every burst Knative's rules keep pods until the stable window holds no load and the grace period
has passed (60 s + 30 s by default), and a burst that comes later still waits for a cold start. A service
whose bursts come minutes apart (a scheduled job, a batch client, a webhook) pays that keep-alive after
every burst and gets every cold start anyway. "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020)
keeps, per application, a histogram of the idle times between invocations and derives from it a pre-warm
window (unload after an invocation, load again at the histogram's head) and a keep-alive window (until its
tail), with a fixed keep-alive as the fallback when the histogram is not representative. This module is
that idea on the data Kapa has.

What it learns. Its only input besides the configuration is a `LoadHistory`: the service's total
concurrency per step over the last HISTORY_S, which Prometheus holds, so a restarted scaler or a second
replica learns the same thing. From it:

* the silences: runs of steps with nothing in flight between two steps with load, and the silence now;
* a keep-alive schedule over "seconds since the load stopped": Knative's pods stay while the silence is no
  longer than `linger_s` (the pauses seen inside bursts); then one pod stays, inactive, while the activator
  steps into the path (HANDOFF_S, Knative's shortest grace period); then none, except that from
  `prewarm_from_s` to `prewarm_until_s`, when the next burst is due, a pod is asked for again;
* the schedule is the cheapest of the candidates on the silences seen. Candidates take `linger_s` from the
  lengths of the silences seen and the pre-warm window from pairs of them, each widened by MARGIN_FRACTION
  and a tick (the window opens `kapa.dev/prewarm-lead` earlier still). Each is charged its idle pod-seconds
  plus its expected cold starts, a cold start weighing Knative's keep-alive (stable window + grace): the
  keep-alive that ski rental's break-even rule gives for that price, so the weight is Knative's own. The
  expected cold starts are not those counted on the silences the candidate was fitted to (which would
  flatter it) but the order-statistics estimate for the next silence (see `_learn`). A candidate with more
  cold starts or more idle pod-seconds than Knative's rules on the same silences is never chosen; with none
  left, or fewer than MIN_SILENCES silences to learn from, Knative's rules decide alone.

What it changes, and when. Never on stale data, on a poke (the activator holds a request), before the
service first reached initial-scale, while the last step had load, or when the panic window saw load the
history does not show: then Knative's decision stands. In a silence longer than `linger_s` it replaces
Knative's idle timers (stable-window decay, grace period, pod retention, scale-down-delay) with the
schedule: the burst's pods are shed at once, the activator takes over, zero, and the pre-warm. The pre-warm asks for one pod (activation-scale pods when that is set, as
Knative wakes a service): it spares the burst its cold start, and the KPA's panic adds the rest of the
burst's pods within a tick, as it would after a cold start. min-scale, max-scale and enable-scale-to-zero
still bound the result. Each change is said in words in the decision's explanation (`kapa explain`).
"""

from __future__ import annotations

import functools
import re
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Final

from kapa.core.contract import MODE_PROXY, MODE_SERVE, SCALING_POLICY_PREDICTIVE
from kapa.core.settings import SCALE_TO_ZERO_GRACE_MIN_S, ServiceConfig
from scaler.decision import (
    TICK_INTERVAL_S,
    Decision,
    DecisionState,
    Observation,
    decide,
)

#: How much load history the policy learns from: bursts up to about a quarter of this apart are learned.
HISTORY_S: Final = 3600.0
#: After the pauses within bursts, one pod stays this long, inactive, so the activator is in the path
#: before the last pod goes (Knative's shortest scale-to-zero grace period).
HANDOFF_S: Final = SCALE_TO_ZERO_GRACE_MIN_S
#: Every learned time is widened by this fraction and one tick. Shahrad et al. widen by 10 % on histograms
#: of 1-minute bins; silences here are measured to the second.
MARGIN_FRACTION: Final = 0.05
#: Fewer silences than this after the pauses within bursts are not representative: Knative's rules decide.
MIN_SILENCES: Final = 3
#: A pre-warm window must span at least this many of the silences seen.
MIN_SILENCES_PER_WINDOW: Final = 2
#: At most this many lengths are tried for each end of the schedule (spread over the lengths seen).
_MAX_CANDIDATES = 24
_COST_TOLERANCE = 1e-6
_BUSY = re.compile(rb"[^\x00]+")


@dataclass(frozen=True, slots=True)
class LoadHistory:
    """A service's total concurrency (requests in flight, whatever the scaling metric) per `step_s`, oldest
    first; the last value is the step that ends at the decision's time."""

    step_s: float
    values: tuple[float, ...]


@dataclass(frozen=True)
class KeepAlive:
    """The schedule learned from one history, over the seconds since the service's load stopped."""

    #: Knative's decision stands while the silence is no longer than this (the pauses within bursts).
    linger_s: float
    #: A pre-warmed pod is asked for while the silence is in [prewarm_from_s, prewarm_until_s]; None: never.
    prewarm_from_s: float | None
    prewarm_until_s: float | None
    #: The median of the silences the pre-warm window spans: when the next burst is expected.
    expected_silence_s: float | None
    #: The median time from one burst's start to the next; None with fewer than two such times.
    burst_period_s: float | None
    #: The silences longer than linger_s (the ends of bursts) it learned from.
    silences: int
    #: On the silences seen: the cold starts expected of the schedule (see _learn) and its idle
    #: pod-seconds, and Knative's.
    cold_starts: float
    idle_pod_s: float
    knative_cold_starts: int
    knative_idle_pod_s: float

    @property
    def zero_after_s(self) -> float:
        """The silence after which no pod stays (outside the pre-warm window)."""
        return self.linger_s + HANDOFF_S


@dataclass(frozen=True)
class Fallback:
    """Why Knative's rules decide alone for this history."""

    reason: str


def decide_with_policy(
    config: ServiceConfig, observation: Observation, history: LoadHistory | None, state: DecisionState, now: float
) -> tuple[Decision, DecisionState]:
    """The service's decision under its scaling policy: Knative's (`scaler.decision.decide`), then, for the
    predictive policy, `adjust`. The state carried on is Knative's own, so the KPA's timers and panic run as
    they would without the policy, and a scaler replaying Prometheus's history reaches the same state."""
    decision, state = decide(config, observation, state, now)
    if config.scaling_policy == SCALING_POLICY_PREDICTIVE:
        decision = adjust(config, decision, observation, history, state.initialised)
    return decision, state


def adjust(
    config: ServiceConfig, decision: Decision, observation: Observation, history: LoadHistory | None, initialised: bool
) -> Decision:
    """Knative's `decision`, changed where the learned schedule says so (see the module's docstring)."""
    if decision.stale or decision.delegated or observation.poked or not initialised:
        return decision
    if history is None or not history.values:
        return _noted(decision, "predictive policy: no load history yet, Knative's rules decide")
    silence_s = current_silence_s(history)
    if silence_s <= TICK_INTERVAL_S:  # load, or a pause no schedule acts on (the shortest linger is a tick)
        return decision
    if silence_s >= config.panic_window_s and (observation.panic_value or 0.0) > 0.0:
        # The history says silent for longer than the panic window, yet the panic window saw load: the
        # history has a hole (a failed scrape reads as nothing in flight), and a hole is no silence.
        return _noted(decision, "predictive policy: the load history disagrees with the panic window, "
                                "Knative's rules decide")
    lesson = learn(config, history)
    if isinstance(lesson, Fallback):
        return _noted(decision, f"predictive policy: Knative's rules decide ({lesson.reason})")
    if silence_s <= lesson.linger_s:
        return decision
    knative_pods = decision.desired_pods
    if (lesson.prewarm_from_s is not None and lesson.prewarm_until_s is not None
            and lesson.prewarm_from_s <= silence_s <= lesson.prewarm_until_s):
        desired = want = _prewarm_pods(config)
        why = f"pre-warmed {desired} pod{'s' if desired != 1 else ''}: {_expectation(lesson, silence_s)}"
    elif silence_s <= lesson.zero_after_s:
        desired, want = min(knative_pods, 1), 0
        why = (f"burst over (silent {_span(silence_s)}; pauses within bursts last up to {_span(lesson.linger_s)}): "
               f"the activator takes over, zero in {_span(lesson.zero_after_s - silence_s)}")
    else:
        desired, want = 0, 0
        why = f"zero early (silent {_span(silence_s)}): {_outlook(lesson, silence_s)}"
    desired = _bounded(config, desired)
    if want > 0 or config.min_scale > 0 or not config.enable_scale_to_zero:
        want = desired  # a bound keeps the service active: Knative never hands such a service to the activator
    if desired == knative_pods and (want > 0) == decision.active:
        return decision
    mode = MODE_PROXY if want == 0 or decision.excess_burst_capacity < 0 or decision.ready_pods == 0 else MODE_SERVE
    notes = (
        f"predictive: {why}; Knative's rules would ask for {knative_pods}",
        (f"predictive: learned from {lesson.silences} silences after bursts in the last "
         f"{_span(len(history.values) * history.step_s)}: {lesson.cold_starts:.1f} cold starts expected and "
         f"{lesson.idle_pod_s:.0f} idle pod-s, where Knative's rules had {lesson.knative_cold_starts} and "
         f"{lesson.knative_idle_pod_s:.0f}"),
    )
    return replace(decision, desired_pods=desired, active=want > 0, mode=mode,
                   explanation=decision.explanation + notes)


def current_silence_s(history: LoadHistory) -> float:
    """Seconds since the history last had load (0 while its last step has load; the whole history when it
    never had any)."""
    quiet = 0
    for value in reversed(history.values):
        if value:
            break
        quiet += 1
    return quiet * history.step_s


def learn(config: ServiceConfig, history: LoadHistory) -> KeepAlive | Fallback:
    """The keep-alive schedule this history supports, or why Knative's rules should decide alone."""
    runs = [(match.start(), match.end()) for match in _BUSY.finditer(bytes(map(bool, history.values)))]
    if len(runs) < 2:
        return Fallback(f"no silence between bursts in the last {_span(len(history.values) * history.step_s)}")
    step = history.step_s
    return _learn(
        tuple((end - start) * step for start, end in runs),
        tuple((following[0] - run[1]) * step for run, following in pairwise(runs)),
        knative_keep_alive_s(config),
        config.prewarm_lead_s,
        _prewarm_pods(config),
    )


def knative_keep_alive_s(config: ServiceConfig) -> float:
    """How long Knative's rules keep a pod after the load stops: until the stable window holds no load, then
    the grace period (or pod retention), then the scale-down-delay."""
    linger_s = max(config.scale_to_zero_grace_period_s, config.scale_to_zero_pod_retention_period_s)
    return config.stable_window_s + linger_s + config.scale_down_delay_s


@functools.lru_cache(maxsize=4096)
def _learn(
    busy_s: tuple[float, ...], silences_s: tuple[float, ...], knative_keep_alive: float, lead_s: float, pods: int
) -> KeepAlive | Fallback:
    """The schedule for busy runs of these lengths separated by these silences (memoised: between two bursts
    every tick asks the same question).

    Counted on the very silences it was fitted to, a schedule would flatter itself. Whatever their
    distribution, the next silence falls below the w-th shortest of n seen with probability w/(n+1), and
    between the i-th and the j-th with (j-i)/(n+1) (order statistics): a candidate is charged the cold starts
    that predicts, scaled to n silences. Knative's keep-alive is not fitted: its count stands.
    """
    gaps = sorted(silences_s)
    count = len(gaps)
    prefix = [0.0]
    for gap in gaps:
        prefix.append(prefix[-1] + gap)

    def idle_up_to(limit: float) -> float:
        """Sum over the silences of min(silence, limit): one pod's idle seconds when held up to `limit`."""
        below = bisect_right(gaps, limit)
        return prefix[below] + limit * (count - below)

    knative_cost = idle_up_to(knative_keep_alive)
    knative_colds = count - bisect_right(gaps, knative_keep_alive)
    cold_weight = knative_keep_alive
    coverage = count / (count + 1)
    distinct = sorted(set(gaps))
    lingers = {TICK_INTERVAL_S} | {_widened(gap) for gap in distinct if _widened(gap) + HANDOFF_S < knative_keep_alive}
    representative = False
    best: tuple[float, float, float] | None = None
    chosen: tuple[float, float | None, float | None, int] = (0.0, None, None, 0)
    for linger in _spread(sorted(lingers)):
        zero_after = linger + HANDOFF_S
        warm = bisect_right(gaps, linger)
        if count - warm < MIN_SILENCES:
            continue
        representative = True
        base_cost = idle_up_to(zero_after)
        base_colds = count - warm * coverage
        options = [(base_cost, base_colds, None, None, 0)]
        ends = _spread([gap for gap in distinct if gap > zero_after])
        for index, low in enumerate(ends):
            start = _narrowed(low)
            asked_from = max(start - lead_s, zero_after)
            spans_from = max(bisect_left(gaps, start), warm)
            for high in ends[index:]:
                end = _widened(high)
                spanned = bisect_right(gaps, end) - spans_from
                if spanned >= MIN_SILENCES_PER_WINDOW:
                    cost = base_cost + pods * (idle_up_to(end) - idle_up_to(asked_from))
                    options.append((cost, base_colds - (spanned - 1) * coverage, asked_from, end, spans_from))
        for cost, colds, asked_from, end, spans_from in options:
            if cost > knative_cost + _COST_TOLERANCE or colds > knative_colds + _COST_TOLERANCE:
                continue
            rank = (cost + cold_weight * colds, colds, cost)
            if best is None or rank < best:
                best, chosen = rank, (linger, asked_from, end, spans_from)
    if not representative:
        return Fallback(f"fewer than {MIN_SILENCES} silences longer than the pauses within bursts to learn from")
    if best is None or best[0] >= knative_cost + cold_weight * knative_colds - _COST_TOLERANCE:
        return Fallback(f"no schedule beat them on the {count} silences seen, on both cold starts and idle pods")
    linger, asked_from, end, spans_from = chosen
    spanned_gaps = gaps[spans_from:bisect_right(gaps, end)] if end is not None else []
    return KeepAlive(
        linger_s=linger,
        prewarm_from_s=asked_from,
        prewarm_until_s=end,
        expected_silence_s=statistics.median(spanned_gaps) if spanned_gaps else None,
        burst_period_s=_burst_period(busy_s, silences_s, linger + HANDOFF_S),
        silences=count - bisect_right(gaps, linger),
        cold_starts=best[1],
        idle_pod_s=best[2],
        knative_cold_starts=knative_colds,
        knative_idle_pod_s=knative_cost,
    )


def _widened(seconds: float) -> float:
    return seconds * (1.0 + MARGIN_FRACTION) + TICK_INTERVAL_S


def _narrowed(seconds: float) -> float:
    return max(0.0, seconds * (1.0 - MARGIN_FRACTION) - TICK_INTERVAL_S)


def _spread(values: Sequence[float]) -> list[float]:
    """At most _MAX_CANDIDATES of the sorted `values`, evenly spread and keeping both ends."""
    if len(values) <= _MAX_CANDIDATES:
        return list(values)
    last = len(values) - 1
    return [values[round(index * last / (_MAX_CANDIDATES - 1))] for index in range(_MAX_CANDIDATES)]


def _burst_period(busy_s: Sequence[float], silences_s: Sequence[float], over_after_s: float) -> float | None:
    """The median time from a burst's start to the next one's, a burst being busy runs joined across
    silences up to over_after_s."""
    periods: list[float] = []
    running = busy_s[0]
    for silence, busy in zip(silences_s, busy_s[1:], strict=True):
        running += silence
        if silence > over_after_s:
            periods.append(running)
            running = 0.0
        running += busy
    # The first period starts with the history's first busy run, which may have begun before the history.
    return statistics.median(periods[1:]) if len(periods) >= 3 else None


def _prewarm_pods(config: ServiceConfig) -> int:
    """Pods asked for ahead of a burst: one, or activation-scale, never above max-scale (as Knative wakes a
    service from zero)."""
    pods = max(1, config.activation_scale)
    return min(pods, config.max_scale) if config.max_scale > 0 else pods


def _bounded(config: ServiceConfig, desired: int) -> int:
    if desired == 0 and not config.enable_scale_to_zero:
        desired = 1
    desired = max(desired, config.min_scale)
    if 0 < config.max_scale < desired:
        desired = config.max_scale
    return desired


def _expectation(lesson: KeepAlive, silence_s: float) -> str:
    every = f"bursts every ~{_span(lesson.burst_period_s)}, " if lesson.burst_period_s is not None else ""
    if lesson.expected_silence_s is None:
        return f"{every}next burst expected soon"
    due_s = lesson.expected_silence_s - silence_s
    return f"{every}next expected in {_span(due_s)}" if due_s > 0 else f"{every}next expected now"


def _outlook(lesson: KeepAlive, silence_s: float) -> str:
    if lesson.prewarm_from_s is not None and silence_s < lesson.prewarm_from_s:
        return f"{_expectation(lesson, silence_s)}, pre-warm in {_span(lesson.prewarm_from_s - silence_s)}"
    if lesson.prewarm_until_s is not None and silence_s > lesson.prewarm_until_s:
        return "no burst came when one was expected; the next request gets a cold start"
    return "the burst is over and the next is not due within Knative's keep-alive"


def _span(seconds: float) -> str:
    """A duration for people: 45s, 3m20s, 1h5m."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def _noted(decision: Decision, note: str) -> Decision:
    return replace(decision, explanation=decision.explanation + (note,))
