"""The KPA decision: how many pods a service wants, as a pure function of (config, observation, state, now).

It reproduces Knative's KPA (decider and scale-to-zero handling) from its documented behaviour:

* desired from the stable window = ceil(stable / target), from the panic window = ceil(panic / target);
  observed values are totals for the service, not per pod;
* per tick at most ceil(max-scale-up-rate × ready) and at least floor(ready / max-scale-down-rate), with
  ready = max(1, ready pods); activation-scale raises any non-zero count to itself;
* panic starts when panic desired / ready ≥ panic threshold, is renewed on every tick that still crosses
  it, and ends only once a full stable window has passed without crossing; in panic the count is
  max(stable, panic) and never goes down; a restarted scaler starts in panic holding the ready pods;
* scale-down-delay applies the largest count of the last delay seconds;
* initial-scale holds until the service first has that many ready pods; Knative applies it only when a
  revision is created, so a service that already runs pods when the scaler first sees it (a restarted
  scaler) is past it, as is one the caller knows existed before (`DecisionState.initial(initialised=True)`);
  min-scale and max-scale clamp (min-scale always: Knative drops it only for revisions no route reaches,
  and every service Kapa manages is reachable);
* scale to zero only when enabled and min-scale is 0: after the service has been idle for a stable window
  it becomes inactive (the activator steps into the path) and keeps one pod for max(grace period, pod
  retention period) before going to zero;
* a poke (the activator holding a request) is demand: never zero, wakes a service at zero at once, and
  restarts the idle clock;
* no data is never zero traffic: the last decision is held and marked stale;
* excess burst capacity = floor(ready × total − target-burst-capacity − panic value) decides whether the
  activator stays in the path.

Nothing here reads a clock or does I/O, so the scaler, `kapa explain` and `kapa simulate` share it and the
answer to "why 7 pods?" is in `Decision.explanation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, TypeVar

from kapa.core.contract import CLASS_HPA, METRIC_CPU, MODE_PROXY, MODE_SERVE
from kapa.core.settings import ServiceConfig

#: How often the scaler decides for every service (Knative's decider tick).
TICK_INTERVAL_S: Final = 2.0
#: Float noise must not add a pod: 21 / 7.000000000000001 is 3, not 4.
_CEIL_TOLERANCE = 1e-9
_Frozen = TypeVar("_Frozen")


@dataclass(frozen=True, slots=True)
class Observation:
    """What the scaler saw for one service at one tick.

    Values are service totals averaged over each window (concurrency, or requests per second when the
    metric is rps). None means no data (Prometheus unreachable, no series): it is never read as zero;
    NaN and infinity count as no data too.
    """

    stable_value: float | None
    panic_value: float | None
    ready_pods: int
    poked: bool = False


@dataclass(frozen=True)
class Decision:
    """One service's decision at one tick, with the reasons that produced it.

    `desired_pods` is what the Deployment should have after every bound, delay and grace period.
    `mode` is MODE_PROXY when the activator must stay in the request path (the scaler wants zero pods, the
    excess burst capacity is negative, or no pod is ready), else MODE_SERVE (kapa.core.contract).
    """

    desired_pods: int
    excess_burst_capacity: int
    panic_mode: bool
    stale: bool
    mode: str
    stable_value: float | None
    panic_value: float | None
    target: float
    ready_pods: int
    at_s: float
    explanation: tuple[str, ...]
    #: Knative's PodAutoscaler "Active": False from the moment the service is idle for a stable window (the
    #: grace period's countdown, activator in the path, desired_pods still 1) and at zero. This, not
    #: desired_pods > 0, is what KEDA's IsActive gets: KEDA then waits the grace period itself (the
    #: ScaledObject's cooldownPeriod), so a scaler silent for less than that can never look idle to KEDA.
    active: bool = True
    #: True for a service of the HPA class: the Kubernetes HPA sets its pod count (desired_pods is the ready
    #: count, informational); Kapa only routes it, to its pods whenever one is ready.
    delegated: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "desired_pods": self.desired_pods,
            "excess_burst_capacity": self.excess_burst_capacity,
            "panic_mode": self.panic_mode,
            "stale": self.stale,
            "mode": self.mode,
            "stable_value": self.stable_value,
            "panic_value": self.panic_value,
            "target": self.target,
            "ready_pods": self.ready_pods,
            "at_s": self.at_s,
            "explanation": list(self.explanation),
            "active": self.active,
            "delegated": self.delegated,
        }


@dataclass(frozen=True)
class DecisionState:
    """Everything one service's decision carries from tick to tick."""

    #: Whether any decision has been made (the first one detects a restarted scaler).
    started: bool = False
    #: Whether the service has once had initial-scale ready pods (from then on initial-scale is ignored).
    initialised: bool = False
    #: Last time the panic threshold was crossed; None when not in panic.
    panic_since_s: float | None = None
    #: The highest count asked for during the current panic.
    max_panic_pods: int = 0
    #: When the service last went from zero (or unknown) to wanting pods.
    active_since_s: float | None = None
    #: When the service became inactive (idle for a stable window; activator in path); None while active.
    inactive_since_s: float | None = None
    #: Last time the activator poked (held a request). Observed traffic needs no clock of its own: the
    #: stable window averages to zero only once it holds no traffic.
    last_poke_s: float | None = None
    #: (time, count) records of the last scale-down-delay seconds, counts strictly decreasing.
    delay_window: tuple[tuple[float, int], ...] = ()
    last: Decision | None = None

    @classmethod
    def initial(cls, initialised: bool = False) -> DecisionState:
        """The state of a service the scaler has not decided for yet.

        `initialised=True` says the service reached its initial scale before (Knative keeps this in the
        PodAutoscaler's status): a scaler restarting in front of a service at zero then leaves it at zero
        instead of starting initial-scale pods for it.
        """
        return _INITIAL_STATE_INITIALISED if initialised else _INITIAL_STATE


_INITIAL_STATE = DecisionState()
_INITIAL_STATE_INITIALISED = DecisionState(initialised=True)
_new_object = object.__new__
_isfinite = math.isfinite


def _made(cls: type[_Frozen], **values: object) -> _Frozen:
    """Build a frozen dataclass instance from all its fields, without its generated __init__.

    A frozen dataclass's __init__ sets each field through object.__setattr__, about 0.2 us a field; the
    scaler builds two such objects per service per tick (10,000 services in 200 ms), so the hot path fills
    the instance dict in one step instead. The result is equal to, and as immutable as, cls(**values).
    """
    instance = _new_object(cls)
    instance.__dict__.update(values)
    return instance


def decide(
    config: ServiceConfig, observation: Observation, state: DecisionState, now: float
) -> tuple[Decision, DecisionState]:
    """Decide one service's pod count at time `now` (seconds, monotonic) and return the state to carry on."""
    notes: list[str] = []
    ready_pods = observation.ready_pods
    first = not state.started
    initialised = state.initialised or ready_pods >= config.initial_scale or (first and ready_pods > 0)
    panic_since = state.panic_since_s
    max_panic = state.max_panic_pods
    active_since = state.active_since_s
    last_poke = now if observation.poked else state.last_poke_s
    if first and initialised and ready_pods < config.initial_scale:
        notes.append(f"existed before this scaler started: initial-scale {config.initial_scale} is not applied again")
    if first and ready_pods > 0:
        # A scaler that (re)starts in front of running pods treats them as just activated, and, like
        # Knative's, starts in panic holding them until it has seen a stable window of data.
        active_since = now
        if ready_pods > 1:
            panic_since, max_panic = now, ready_pods
            notes.append(f"restart: holds {ready_pods} ready pods in panic for a stable window")

    stable = observation.stable_value
    panic = observation.panic_value
    # NaN or infinity (a 0/0 in a query) is no more a measurement than a missing series.
    if stable is None or panic is None or not (_isfinite(stable) and _isfinite(panic)):
        return _hold(
            config, observation, state, now, notes, initialised, panic_since, max_panic, active_since, last_poke
        )

    target = config.target
    ready = ready_pods if ready_pods > 1 else 1
    stable_pods = _pods_for(stable, target)
    panic_pods = _pods_for(panic, target)
    notes.append(
        f"stable: ceil({stable:.4g}/{target:g})={stable_pods}; panic window: ceil({panic:.4g}/{target:g})={panic_pods}"
    )

    max_up = math.ceil(config.max_scale_up_rate * ready)
    max_down = int(ready / config.max_scale_down_rate)
    if stable_pods > max_up:
        notes.append(f"max-scale-up-rate {config.max_scale_up_rate:g} limits to {max_up}")
        stable_pods = max_up
    elif stable_pods < max_down:
        notes.append(f"max-scale-down-rate {config.max_scale_down_rate:g} keeps at least {max_down}")
        stable_pods = max_down
    panic_pods = max_up if panic_pods > max_up else max_down if panic_pods < max_down else panic_pods
    activation = config.activation_scale
    if activation > 1:
        if 0 < stable_pods < activation:
            notes.append(f"activation-scale raises {stable_pods} to {activation}")
            stable_pods = activation
        if 0 < panic_pods < activation:
            panic_pods = activation

    if panic_pods / ready >= config.panic_threshold:
        verb = "renewed" if panic_since is not None else "entered"
        notes.append(f"panic {verb}: {panic_pods}/{ready} ready >= {config.panic_threshold:g}")
        panic_since = now
    elif panic_since is not None and now - panic_since > config.stable_window_s:
        notes.append(f"panic left: below threshold for a {config.stable_window_s:g}s stable window")
        panic_since, max_panic = None, 0
    if panic_since is not None:
        desired = panic_pods if panic_pods > stable_pods else stable_pods
        if desired > max_panic:
            max_panic = desired
        elif desired < max_panic:
            notes.append(f"panic: no scale-down, holds {max_panic}")
            desired = max_panic
    else:
        desired = stable_pods

    if observation.poked and desired < 1:
        desired = _wake_pods(config)
        notes.append(f"poke: held request, wakes {desired}")

    delay_window = state.delay_window
    if config.scale_down_delay_s > 0.0:
        delay_window = _record_delay(delay_window, now, desired, config.scale_down_delay_s)
        delayed = delay_window[0][1]
        if delayed > desired:
            notes.append(f"scale-down-delay {config.scale_down_delay_s:g}s holds {delayed}")
            desired = delayed
    elif delay_window:
        delay_window = ()

    desired = _apply_bounds(config, desired, initialised, notes)
    want = desired
    inactive_since = state.inactive_since_s
    last_desired = state.last.desired_pods if state.last is not None else None
    if desired == 0:
        desired, want, inactive_since = _handle_zero(
            config, now, ready_pods, last_desired, active_since, last_poke, inactive_since, notes
        )
    else:
        inactive_since = None
        if active_since is None or last_desired == 0:
            active_since = now

    excess = _excess_burst_capacity(config, ready_pods, panic)
    mode = MODE_PROXY if want == 0 or excess < 0 or ready_pods == 0 else MODE_SERVE
    decision = _decision(
        desired, excess, panic_since is not None, False, mode, stable, panic, target, ready_pods, now, notes,
        active=want > 0,
    )
    return decision, _state(
        initialised, panic_since, max_panic, active_since, inactive_since, last_poke, delay_window, decision
    )


def delegated_decision(config: ServiceConfig, ready_pods: int, now: float) -> Decision:
    """A service of the HPA class: nothing to decide, only to route (serve while a pod is ready) and explain."""
    unit = "% of the pods' cpu requests" if config.metric == METRIC_CPU else " MiB of memory per pod"
    why = (f"scaled by the Kubernetes HPA ({CLASS_HPA}) on {config.metric}, target {config.total_target:g}{unit}, "
           f"between {max(1, config.min_scale)} and {config.max_scale or 'any number of'} pods; Kapa only routes it")
    return Decision(
        desired_pods=ready_pods, excess_burst_capacity=0, panic_mode=False, stale=False,
        mode=MODE_SERVE if ready_pods > 0 else MODE_PROXY, stable_value=None, panic_value=None,
        target=config.total_target, ready_pods=ready_pods, at_s=now, explanation=(why,), delegated=True,
    )


def _decision(
    desired: int,
    excess: int,
    panic_mode: bool,
    stale: bool,
    mode: str,
    stable: float | None,
    panic: float | None,
    target: float,
    ready_pods: int,
    now: float,
    notes: list[str],
    active: bool,
) -> Decision:
    return _made(
        Decision,
        active=active,
        desired_pods=desired,
        excess_burst_capacity=excess,
        panic_mode=panic_mode,
        stale=stale,
        mode=mode,
        stable_value=stable,
        panic_value=panic,
        target=target,
        ready_pods=ready_pods,
        at_s=now,
        explanation=tuple(notes),
    )


def _state(
    initialised: bool,
    panic_since: float | None,
    max_panic: int,
    active_since: float | None,
    inactive_since: float | None,
    last_poke: float | None,
    delay_window: tuple[tuple[float, int], ...],
    decision: Decision,
) -> DecisionState:
    return _made(
        DecisionState,
        started=True,
        initialised=initialised,
        panic_since_s=panic_since,
        max_panic_pods=max_panic,
        active_since_s=active_since,
        inactive_since_s=inactive_since,
        last_poke_s=last_poke,
        delay_window=delay_window,
        last=decision,
    )


def _pods_for(value: float, target: float) -> int:
    pods = math.ceil(value / target - _CEIL_TOLERANCE)
    return pods if pods > 0 else 0


def _wake_pods(config: ServiceConfig) -> int:
    """Pods a service at zero gets on demand: one, or activation-scale (never above max-scale)."""
    pods = config.activation_scale if config.activation_scale > 1 else 1
    return min(pods, config.max_scale) if config.max_scale > 0 else pods


def _record_delay(
    window: tuple[tuple[float, int], ...], now: float, desired: int, delay_s: float
) -> tuple[tuple[float, int], ...]:
    """Add (now, desired) to the scale-down-delay window; its first record is then the window's maximum.

    Records older than the delay drop off the front; records not above the new count drop off the back
    (they can never be the maximum again), so the window stays as short as the counts are varied.
    """
    horizon = now - delay_s
    start = 0
    while start < len(window) and window[start][0] <= horizon:
        start += 1
    end = len(window)
    while end > start and window[end - 1][1] <= desired:
        end -= 1
    return (*window[start:end], (now, desired))


def _apply_bounds(config: ServiceConfig, desired: int, initialised: bool, notes: list[str]) -> int:
    if not initialised and desired < config.initial_scale:
        notes.append(f"initial-scale {config.initial_scale} until first reached")
        desired = config.initial_scale
    if desired < config.min_scale:
        notes.append(f"min-scale {config.min_scale}")
        desired = config.min_scale
    if 0 < config.max_scale < desired:
        notes.append(f"max-scale {config.max_scale}")
        desired = config.max_scale
    return desired


def _handle_zero(
    config: ServiceConfig,
    now: float,
    ready_pods: int,
    last_desired: int | None,
    active_since: float | None,
    last_poke: float | None,
    inactive_since: float | None,
    notes: list[str],
) -> tuple[int, int, float | None]:
    """Knative's scale-to-zero: returns (desired, want, inactive_since) when the decision says zero.

    want is what the activator sees: 0 once the service is inactive, so it steps into the path while the
    last pod lingers for the grace period.
    """
    if not config.enable_scale_to_zero:
        notes.append("enable-scale-to-zero false: keeps 1")
        return 1, 1, None
    if last_desired == 0 or (last_desired is None and ready_pods == 0):
        notes.append("idle: stays at zero")
        return 0, 0, inactive_since if inactive_since is not None else now
    if inactive_since is None:
        idle_from = max((t for t in (active_since, last_poke) if t is not None), default=None)
        if idle_from is not None and now - idle_from < config.stable_window_s:
            notes.append(f"idle: keeps 1 for {idle_from + config.stable_window_s - now:.0f}s more of the stable window")
            return 1, 1, None
        inactive_since = now
    linger_s = max(config.scale_to_zero_grace_period_s, config.scale_to_zero_pod_retention_period_s)
    remaining_s = inactive_since + linger_s - now
    if remaining_s > 0:
        notes.append(f"grace period: {remaining_s:.0f}s until zero")
        return 1, 0, inactive_since
    notes.append(f"scale to zero: idle for a stable window and {linger_s:g}s grace")
    return 0, 0, inactive_since


def _excess_burst_capacity(config: ServiceConfig, ready_pods: int, panic_value: float) -> int:
    """Knative's EBC: spare capacity beyond target-burst-capacity; -1 keeps the activator in path for good."""
    burst = config.target_burst_capacity
    if burst < 0:
        return -1
    if burst == 0:
        return 0
    return math.floor(ready_pods * config.total_target - burst - panic_value)


def _hold(
    config: ServiceConfig,
    observation: Observation,
    state: DecisionState,
    now: float,
    notes: list[str],
    initialised: bool,
    panic_since: float | None,
    max_panic: int,
    active_since: float | None,
    last_poke: float | None,
) -> tuple[Decision, DecisionState]:
    """No data: keep the last decision (or, before any, initial-scale / the ready pods) and say it is stale."""
    ready_pods = observation.ready_pods
    last = state.last
    inactive_since = state.inactive_since_s
    if last is not None:
        desired = last.desired_pods
        notes.append(f"no data: holds the last decision of {desired} pods")
    else:
        desired = config.initial_scale if not initialised else ready_pods
        notes.append(f"no data yet: starts at {desired} pods")
        desired = _apply_bounds(config, desired, True, notes)
    if observation.poked and desired == 0:
        desired = _wake_pods(config)
        notes.append(f"poke: held request, wakes {desired}")
    if desired > 0:
        inactive_since = None
        if active_since is None or (last is not None and last.desired_pods == 0):
            active_since = now
    if last is not None and last.desired_pods == desired and last.ready_pods == ready_pods:
        excess, mode = last.excess_burst_capacity, last.mode
    else:
        excess = _excess_burst_capacity(config, ready_pods, 0.0)
        mode = MODE_PROXY if desired == 0 or excess < 0 or ready_pods == 0 else MODE_SERVE
    stable, panic = (
        value if value is not None and _isfinite(value) else None
        for value in (observation.stable_value, observation.panic_value)
    )
    decision = _decision(
        desired, excess, panic_since is not None, True, mode, stable, panic, config.target, ready_pods, now, notes,
        active=desired > 0,
    )
    return decision, _state(
        initialised, panic_since, max_panic, active_since, inactive_since, last_poke, state.delay_window, decision
    )
