"""The KPA decision, rule by rule, against Knative's documented behaviour and worked examples."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest

from kapa.core.contract import ANNOTATION_CONTAINER_CONCURRENCY, MODE_PROXY, MODE_SERVE, knative_annotation
from kapa.core.services import ServiceKey, ServiceSpec
from kapa.core.settings import AutoscalerConfig, ServiceConfig, service_config
from scaler.decision import TICK_INTERVAL_S, Decision, DecisionState, Observation, decide


def make_config(annotations: Mapping[str, str] | None = None, **global_keys: str) -> ServiceConfig:
    """A service's config through the real parsing path: short annotation names, config-autoscaler keys."""
    full: dict[str, str] = {}
    for name, value in (annotations or {}).items():
        full[ANNOTATION_CONTAINER_CONCURRENCY if name == "container-concurrency" else knative_annotation(name)] = value
    global_config, global_errors = AutoscalerConfig.from_mapping(
        {k.replace("_", "-"): v for k, v in global_keys.items()}
    )
    config, errors = service_config(global_config, ServiceSpec(ServiceKey("default", "svc"), full))
    assert not global_errors and not errors, [str(e) for e in [*global_errors, *errors]]
    return config


def running(since: float = -1000.0, desired: int = 1, ready: int = 1) -> DecisionState:
    """A service the scaler has been deciding for a while: initialised, active, not in panic."""
    last = Decision(desired, 0, False, False, MODE_SERVE, 0.0, 0.0, 1.0, ready, since, ())
    return DecisionState(started=True, initialised=True, active_since_s=since, last=last)


def run(config: ServiceConfig, state: DecisionState, steps: Sequence[tuple[float, Observation]]) -> list[Decision]:
    decisions = []
    for now, observation in steps:
        decision, state = decide(config, observation, state, now)
        decisions.append(decision)
    return decisions


def steady(value: float, ready: int, poked: bool = False) -> Observation:
    return Observation(value, value, ready, poked)


# --- target and desired pods: the worked examples ---------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "concurrency", "ready", "expected"),
    [
        pytest.param({"container-concurrency": "10"}, 100.0, 12, 15, id="cc10-at-70pct-100-concurrent-gives-15"),
        pytest.param(
            {"target": "10", "target-utilization-percentage": "100"}, 50.0, 7, 5, id="target10-at-100pct-50-gives-5"
        ),
        pytest.param({"target": "10"}, 50.0, 5, 8, id="target10-at-default-70pct-50-gives-8"),
        pytest.param({}, 140.0, 3, 2, id="default-target-100-at-70pct"),
        pytest.param(
            {"target": "50", "container-concurrency": "10"}, 21.0, 2, 3, id="target-capped-at-containerConcurrency"
        ),
        pytest.param({"metric": "rps"}, 300.0, 4, 3, id="rps-default-200-at-70pct"),
        pytest.param(
            {"metric": "rps", "target": "50", "target-utilization-percentage": "100"},
            120.0,
            5,
            3,
            id="rps-target-annotation",
        ),
        pytest.param(
            {"target": "7", "target-utilization-percentage": "100"}, 21.0, 2, 3, id="exact-multiple-no-extra-pod"
        ),
        pytest.param(
            {"target": "7", "target-utilization-percentage": "100"}, 21.0001, 3, 4, id="just-above-multiple-adds-pod"
        ),
    ],
)
def test_desired_pods_is_ceil_of_total_over_target(
    annotations: dict[str, str], concurrency: float, ready: int, expected: int
) -> None:
    """Ready differs from the expected count in every row (above and below it, inside the rate bounds and
    under the panic threshold), so a decision that echoes the ready pods fails each row."""
    assert ready != expected and ready // 2 <= expected < 2 * ready
    config = make_config(annotations)
    decision, _ = decide(config, steady(concurrency, ready), running(desired=ready, ready=ready), 0.0)
    assert decision.desired_pods == expected
    assert not decision.panic_mode and not decision.stale
    assert any(note.startswith("stable: ceil(") for note in decision.explanation)


@pytest.mark.parametrize(
    ("concurrency", "expected"),
    [
        pytest.param(1000.0, 3, id="under-load-at-most-max-scale-3"),
        pytest.param(0.0, 1, id="idle-at-least-min-scale-1"),
    ],
)
def test_min_and_max_scale_clamp(concurrency: float, expected: int) -> None:
    config = make_config({"min-scale": "1", "max-scale": "3"})
    # Ready pods follow the decision, so the scale-down rate never hides the bound.
    state = running(desired=expected, ready=expected)
    decisions = run(config, state, [(t, steady(concurrency, expected)) for t in (0.0, 2.0, 200.0)])
    assert [d.desired_pods for d in decisions] == [expected] * 3
    note = "max-scale 3" if expected == 3 else "min-scale 1"
    assert note in decisions[-1].explanation


# --- rate bounds ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("global_keys", "concurrency", "ready", "expected", "note"),
    [
        pytest.param(
            {"max-scale-up-rate": "2"},
            700.0,
            3,
            6,
            "max-scale-up-rate 2 limits to 6",
            id="up-rate-ceil-rate-times-ready",
        ),
        pytest.param(
            {"max-scale-up-rate": "1.5"}, 700.0, 3, 5, "max-scale-up-rate 1.5 limits to 5", id="up-rate-rounds-up"
        ),
        pytest.param({}, 7.0, 10, 5, "max-scale-down-rate 2 keeps at least 5", id="down-rate-floor-ready-over-rate"),
        pytest.param(
            {"max-scale-down-rate": "4"}, 7.0, 10, 2, "max-scale-down-rate 4 keeps at least 2", id="down-rate-4"
        ),
        pytest.param({}, 7.0, 3, 1, None, id="down-rate-not-binding"),
    ],
)
def test_rate_bounds_per_tick(
    global_keys: dict[str, str], concurrency: float, ready: int, expected: int, note: str | None
) -> None:
    config = make_config(**global_keys)
    # The stable value drives the count; the panic value stays low so panic does not interfere.
    decision, _ = decide(config, Observation(concurrency, 0.0, ready), running(desired=ready, ready=ready), 0.0)
    assert decision.desired_pods == expected
    if note:
        assert note in decision.explanation


def test_rate_bounds_use_at_least_one_ready_pod() -> None:
    config = make_config(max_scale_up_rate="2")
    decision, _ = decide(config, Observation(700.0, 0.0, 0), running(desired=1, ready=0), 0.0)
    assert decision.desired_pods == 2


# --- panic ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("panic_value", "ready", "enters"),
    [
        pytest.param(28.0, 2, True, id="4-of-2-ready-is-threshold-2"),
        pytest.param(27.9, 2, True, id="ceil-makes-4"),
        pytest.param(21.0, 2, False, id="3-of-2-ready-below-2"),
        pytest.param(14.0, 0, True, id="ready-counts-as-at-least-1"),
    ],
)
def test_panic_entry_threshold(panic_value: float, ready: int, enters: bool) -> None:
    config = make_config(annotations={"target": "7", "target-utilization-percentage": "100"})
    decision, state = decide(
        config, Observation(7.0, panic_value, ready), running(desired=max(1, ready), ready=ready), 0.0
    )
    assert decision.panic_mode is enters
    assert (state.panic_since_s == 0.0) is enters


def test_panic_threshold_annotation_changes_entry() -> None:
    config = make_config({"target": "7", "target-utilization-percentage": "100", "panic-threshold-percentage": "300"})
    decision, _ = decide(config, Observation(7.0, 28.0, 2), running(desired=2, ready=2), 0.0)
    assert not decision.panic_mode


def _panic_run(over_at: set[float], until: float) -> list[Decision]:
    config = make_config({"target": "7", "target-utilization-percentage": "100"})
    steps = []
    t = 0.0
    while t <= until:
        # 56 in the panic window is 8 pods against 2 ready: over the threshold; 7 is 1 pod: under it.
        steps.append((t, Observation(7.0, 56.0 if t in over_at else 7.0, 2)))
        t += TICK_INTERVAL_S
    return run(config, running(desired=2, ready=2), steps)


def test_panic_is_left_only_after_a_full_stable_window_without_crossing() -> None:
    decisions = _panic_run({0.0}, 70.0)
    in_panic = [d.at_s for d in decisions if d.panic_mode]
    assert in_panic == [t for t in range(0, 61, 2)]
    assert (
        decisions[31].at_s == 62.0
        and "panic left: below threshold for a 60s stable window" in decisions[31].explanation
    )


def test_panic_is_renewed_by_every_tick_over_the_threshold() -> None:
    decisions = _panic_run({0.0, 30.0}, 100.0)
    assert [d.at_s for d in decisions if d.panic_mode][-1] == 90.0
    renewed = next(d for d in decisions if d.at_s == 30.0)
    assert any(note.startswith("panic renewed") for note in renewed.explanation)


def test_in_panic_the_count_never_goes_down() -> None:
    decisions = _panic_run({0.0}, 70.0)
    assert [d.desired_pods for d in decisions[:31]] == [8] * 31
    assert "panic: no scale-down, holds 8" in decisions[1].explanation
    # Once panic is over the stable count applies again (bounded by the scale-down rate: floor(2/2)=1).
    assert decisions[31].desired_pods == 1


def test_in_panic_a_larger_stable_count_wins() -> None:
    config = make_config({"target": "7", "target-utilization-percentage": "100"})
    decision, _ = decide(config, Observation(70.0, 28.0, 2), running(desired=2, ready=2), 0.0)
    assert decision.panic_mode and decision.desired_pods == 10


def test_a_restarted_scaler_starts_in_panic_holding_the_ready_pods() -> None:
    config = make_config()
    decisions = run(
        config, DecisionState.initial(), [(0.0, steady(1.0, 5)), (2.0, steady(1.0, 5)), (62.0, steady(1.0, 5))]
    )
    assert [(d.desired_pods, d.panic_mode) for d in decisions] == [(5, True), (5, True), (2, False)]
    assert "restart: holds 5 ready pods in panic for a stable window" in decisions[0].explanation


# --- scale-down-delay ------------------------------------------------------------------------------------------


def test_scale_down_delay_applies_the_largest_count_of_the_delay() -> None:
    config = make_config({"scale-down-delay": "30s", "target": "1", "target-utilization-percentage": "100"})
    steps = [(0.0, Observation(5.0, 5.0, 5))] + [(t, Observation(1.0, 1.0, 5)) for t in range(2, 34, 2)]
    decisions = run(config, running(desired=5, ready=5), steps)
    by_time = {d.at_s: d for d in decisions}
    assert all(by_time[t].desired_pods == 5 for t in range(0, 30, 2))
    assert "scale-down-delay 30s holds 5" in by_time[28].explanation
    assert by_time[30].desired_pods == 2  # the delay is over; the scale-down rate floor(5/2) still applies


def test_scale_down_delay_follows_increases_at_once() -> None:
    config = make_config({"scale-down-delay": "1m", "target": "1", "target-utilization-percentage": "100"})
    decisions = run(
        config, running(desired=2, ready=2), [(0.0, Observation(2.0, 2.0, 2)), (2.0, Observation(3.0, 3.0, 2))]
    )
    assert [d.desired_pods for d in decisions] == [2, 3]


def test_scale_down_delay_holds_before_scale_to_zero() -> None:
    config = make_config({"scale-down-delay": "10s"}, scale_to_zero_grace_period="6s")
    steps = [(0.0, steady(5.0, 1))] + [(t, steady(0.0, 1)) for t in range(2, 30, 2)]
    decisions = run(config, running(desired=1), steps)
    first_zero = next(d.at_s for d in decisions if d.desired_pods == 0)
    # 1 pod held by the delay until t=10, inactive from t=10, grace 6 s -> zero at t=16.
    assert first_zero == 16.0


# --- scale to zero -----------------------------------------------------------------------------------------------


def _first_zero(
    config: ServiceConfig, state: DecisionState, start: float = 0.0, until: float = 400.0
) -> tuple[float | None, list[Decision]]:
    steps = []
    t = start
    while t <= until:
        steps.append((t, steady(0.0, 1)))
        t += TICK_INTERVAL_S
    decisions = run(config, state, steps)
    return next((d.at_s for d in decisions if d.desired_pods == 0), None), decisions


@pytest.mark.parametrize(
    ("annotations", "global_keys", "zero_at"),
    [
        pytest.param({}, {}, 30.0, id="default-grace-30s"),
        pytest.param({}, {"scale-to-zero-grace-period": "10s"}, 10.0, id="grace-10s"),
        pytest.param({"scale-to-zero-pod-retention-period": "1m"}, {}, 60.0, id="retention-longer-than-grace"),
        pytest.param({"scale-to-zero-pod-retention-period": "10s"}, {}, 30.0, id="grace-longer-than-retention"),
        pytest.param({}, {"enable-scale-to-zero": "false"}, None, id="disabled-keeps-1"),
        pytest.param({"min-scale": "1"}, {}, None, id="min-scale-1-keeps-1"),
    ],
)
def test_scale_to_zero_after_idle_and_grace(
    annotations: dict[str, str], global_keys: dict[str, str], zero_at: float | None
) -> None:
    config = make_config(annotations, **global_keys)
    first_zero, decisions = _first_zero(config, running(since=-1000.0))
    assert first_zero == zero_at
    if zero_at is not None:
        assert all(d.desired_pods == 1 for d in decisions if d.at_s < zero_at)
        assert all(d.desired_pods == 0 for d in decisions if d.at_s >= zero_at)
        # While the last pod lingers the activator is already in the path, and the service is no longer
        # Active (what KEDA's IsActive answers; KEDA waits the same grace as its cooldownPeriod).
        assert decisions[0].mode == MODE_PROXY
        assert not any(d.active for d in decisions)
        assert f"grace period: {zero_at:.0f}s until zero" in decisions[0].explanation
    else:
        assert all(d.desired_pods == 1 and d.active for d in decisions)


def test_recently_activated_service_keeps_a_pod_for_a_stable_window_then_grace() -> None:
    config = make_config(target_burst_capacity="0")
    first_zero, decisions = _first_zero(config, running(since=100.0), start=110.0)
    assert first_zero == 190.0  # idle from activation at 100: inactive at 160, zero 30 s later
    early = decisions[0]
    assert early.desired_pods == 1 and early.mode == MODE_SERVE and early.active
    assert "idle: keeps 1 for 50s more of the stable window" in early.explanation


def test_a_service_at_zero_stays_at_zero() -> None:
    config = make_config()
    state = running(desired=0, ready=0)
    decisions = run(config, state, [(t, Observation(0.0, 0.0, 0)) for t in (0.0, 2.0, 4.0)])
    assert [d.desired_pods for d in decisions] == [0, 0, 0]
    assert all(d.mode == MODE_PROXY for d in decisions)


def test_traffic_during_grace_keeps_the_service() -> None:
    config = make_config(target_burst_capacity="0")
    steps = [(0.0, steady(0.0, 1)), (10.0, steady(0.5, 1)), (40.0, steady(0.5, 1))]
    decisions = run(config, running(), steps)
    assert [d.desired_pods for d in decisions] == [1, 1, 1]
    # Inactive (activator in path) during the grace period, serving again once traffic shows.
    assert [d.mode for d in decisions] == [MODE_PROXY, MODE_SERVE, MODE_SERVE]
    assert [d.active for d in decisions] == [False, True, True]


# --- no data -------------------------------------------------------------------------------------------------------


def test_no_data_holds_the_last_decision_and_says_so() -> None:
    config = make_config({"target": "1", "target-utilization-percentage": "100"})
    decisions = run(
        config,
        running(desired=5, ready=5),
        [(0.0, steady(5.0, 5)), (2.0, Observation(None, None, 5)), (4.0, Observation(None, 3.0, 5))],
    )
    assert [(d.desired_pods, d.stale, d.active) for d in decisions] == [(5, False, True), (5, True, True), (5, True, True)]
    assert "no data: holds the last decision of 5 pods" in decisions[1].explanation


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_unusable_values_count_as_no_data(bad: float) -> None:
    config = make_config()
    decisions = run(
        config, running(desired=3, ready=3), [(0.0, Observation(bad, 1.0, 3)), (2.0, Observation(1.0, bad, 3))]
    )
    assert [(d.desired_pods, d.stale) for d in decisions] == [(3, True), (3, True)]
    assert (decisions[0].stable_value, decisions[1].panic_value) == (None, None)  # JSON has no NaN


def test_no_data_is_never_zero_traffic() -> None:
    config = make_config()
    steps = [(0.0, steady(0.0, 1))] + [(t, Observation(None, None, 1)) for t in range(2, 400, 2)]
    decisions = run(config, running(), steps)
    assert all(d.desired_pods == 1 for d in decisions)


@pytest.mark.parametrize(
    ("annotations", "global_keys", "ready", "expected"),
    [
        pytest.param({}, {}, 0, 1, id="new-service-starts-at-initial-scale"),
        pytest.param({"initial-scale": "3"}, {}, 0, 3, id="initial-scale-3"),
        pytest.param(
            {"initial-scale": "0"}, {"allow-zero-initial-scale": "true"}, 0, 0, id="zero-initial-scale-allowed"
        ),
        pytest.param({"initial-scale": "5", "max-scale": "2"}, {}, 0, 2, id="initial-scale-capped-by-max"),
        pytest.param({}, {}, 1, 1, id="running-service-keeps-its-pod"),
    ],
)
def test_no_data_before_any_decision(
    annotations: dict[str, str], global_keys: dict[str, str], ready: int, expected: int
) -> None:
    decision, _ = decide(
        make_config(annotations, **global_keys), Observation(None, None, ready), DecisionState.initial(), 0.0
    )
    assert decision.stale and decision.desired_pods == expected


# --- initial scale and activation scale --------------------------------------------------------------------------


def test_initial_scale_holds_until_first_reached() -> None:
    config = make_config({"initial-scale": "3"})
    steps = [(0.0, Observation(0.0, 0.0, 0)), (2.0, Observation(0.0, 0.0, 2)), (4.0, Observation(0.0, 0.0, 3))]
    decisions = run(config, DecisionState.initial(), steps)
    assert [d.desired_pods for d in decisions[:2]] == [3, 3]
    assert "initial-scale 3 until first reached" in decisions[1].explanation
    # Reached: initial-scale no longer applies; idle, the scale-down rate floor(3/2)=1, then the idle rules.
    assert decisions[2].desired_pods == 1
    assert not any(note.startswith("initial-scale") for note in decisions[2].explanation)


@pytest.mark.parametrize(
    ("concurrency", "expected"),
    [
        pytest.param(1.0, 3, id="small-load-raised-to-activation-scale"),
        pytest.param(35.0, 5, id="larger-load-unchanged"),
        pytest.param(0.0, 0, id="zero-stays-zero"),
    ],
)
def test_activation_scale(concurrency: float, expected: int) -> None:
    config = make_config({"activation-scale": "3", "target": "7", "target-utilization-percentage": "100"})
    decision, _ = decide(config, Observation(concurrency, 0.0, 0), running(desired=0, ready=0), 0.0)
    assert decision.desired_pods == expected


# --- pokes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "observation", "expected"),
    [
        pytest.param({}, Observation(0.0, 0.0, 0, poked=True), 1, id="poke-wakes-one"),
        pytest.param(
            {"activation-scale": "3"}, Observation(0.0, 0.0, 0, poked=True), 3, id="poke-wakes-activation-scale"
        ),
        pytest.param({}, Observation(None, None, 0, poked=True), 1, id="poke-without-data-wakes"),
        pytest.param(
            {"activation-scale": "3", "max-scale": "2"},
            Observation(0.0, 0.0, 0, poked=True),
            2,
            id="wake-capped-by-max-scale",
        ),
    ],
)
def test_poke_wakes_a_service_at_zero_at_once(
    annotations: dict[str, str], observation: Observation, expected: int
) -> None:
    decision, _ = decide(make_config(annotations), observation, running(desired=0, ready=0), 100.0)
    assert decision.desired_pods == expected
    assert decision.mode == MODE_PROXY  # no pod is ready yet: the activator holds the request
    assert any(note.startswith("poke: held request, wakes") for note in decision.explanation)


def test_poke_restarts_the_idle_clock() -> None:
    config = make_config()
    decision, state = decide(config, Observation(0.0, 0.0, 0, poked=True), running(desired=0, ready=0), 100.0)
    first_zero, _ = _first_zero(config, state, start=102.0)
    assert first_zero == 190.0  # a stable window after the poke, then the 30 s grace period


# --- excess burst capacity and mode --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("burst", "ready", "panic", "expected_ebc", "expected_mode"),
    [
        pytest.param("211", 3, 50.0, 39, MODE_SERVE, id="default-tbc-enough-capacity"),
        pytest.param("211", 2, 50.0, -61, MODE_PROXY, id="default-tbc-too-little"),
        pytest.param("100", 3, 0.5, 199, MODE_SERVE, id="floor"),
        pytest.param("-1", 30, 0.0, -1, MODE_PROXY, id="tbc-minus-1-always-proxy"),
        pytest.param("0", 1, 90.0, 0, MODE_SERVE, id="tbc-0-never-proxy"),
    ],
)
def test_excess_burst_capacity_and_mode(
    burst: str, ready: int, panic: float, expected_ebc: int, expected_mode: str
) -> None:
    config = make_config({"target-burst-capacity": burst})
    # A stable value that keeps the count at `ready` (target 70 per pod) and a panic value below threshold.
    decision, _ = decide(config, Observation(70.0 * ready, panic, ready), running(desired=ready, ready=ready), 0.0)
    assert decision.excess_burst_capacity == expected_ebc
    assert decision.mode == expected_mode


def test_ebc_uses_containerConcurrency_as_total() -> None:
    config = make_config({"container-concurrency": "10", "target-burst-capacity": "5"})
    decision, _ = decide(config, Observation(14.0, 3.0, 2), running(desired=2, ready=2), 0.0)
    assert decision.excess_burst_capacity == 12  # floor(2*10 - 5 - 3)


def test_proxy_mode_when_no_pod_is_ready_even_with_capacity_configured() -> None:
    config = make_config({"target-burst-capacity": "0"})
    decision, _ = decide(config, Observation(5.0, 5.0, 0), running(desired=1, ready=0), 0.0)
    assert decision.desired_pods == 1 and decision.mode == MODE_PROXY


# --- the decision value --------------------------------------------------------------------------------------------


def test_decision_to_json_carries_values_and_reasons() -> None:
    config = make_config({"container-concurrency": "10"})
    decision, _ = decide(config, steady(100.0, 15), running(desired=15, ready=15), 42.0)
    body = decision.to_json()
    assert body["desired_pods"] == 15 and body["target"] == 7.0 and body["ready_pods"] == 15 and body["at_s"] == 42.0
    assert body["mode"] in (MODE_SERVE, MODE_PROXY) and body["stale"] is False
    assert body["explanation"][0].startswith("stable: ceil(100/7)=15; panic window: ceil(100/7)=15")


def test_decide_does_not_mutate_its_inputs() -> None:
    config = make_config()
    state = running()
    before = replace(state)
    decide(config, steady(500.0, 1), state, 0.0)
    assert state == before


@pytest.mark.parametrize(
    ("annotations", "known_before", "observation", "expected_pods", "expected_panic", "note"),
    [
        pytest.param({}, False, Observation(0.0, 0.0, 0), 1, False, "initial-scale 1 until first reached",
                     id="new-service-gets-initial-scale"),
        pytest.param({"initial-scale": "3"}, False, Observation(None, None, 0), 3, False, "no data yet: starts at 3 pods",
                     id="new-service-without-data-gets-initial-scale"),
        pytest.param({}, True, Observation(0.0, 0.0, 0), 0, False, "idle: stays at zero",
                     id="service-known-at-zero-stays-at-zero"),
        pytest.param({}, True, Observation(None, None, 0), 0, False, "no data yet: starts at 0 pods",
                     id="service-known-at-zero-without-data-stays-at-zero"),
        pytest.param({"initial-scale": "5"}, False, Observation(0.0, 0.0, 2), 2, True,
                     "existed before this scaler started: initial-scale 5 is not applied again",
                     id="running-below-initial-scale-keeps-its-pods"),
        pytest.param({"initial-scale": "3"}, False, Observation(None, None, 1), 1, False,
                     "existed before this scaler started: initial-scale 3 is not applied again",
                     id="one-running-pod-without-data-is-kept"),
        pytest.param({}, False, Observation(0.0, 0.0, 4), 4, True, "restart: holds 4 ready pods in panic for a stable window",
                     id="idle-running-pods-are-held-in-panic"),
    ],
)
def test_first_decision_after_a_scaler_restart(
    annotations: dict[str, str],
    known_before: bool,
    observation: Observation,
    expected_pods: int,
    expected_panic: bool,
    note: str,
) -> None:
    """Knative applies initial-scale only when a revision is created: a (re)started scaler must not apply it to
    a service that already ran, whether it shows running pods or the caller knows it existed before."""
    decision, state = decide(make_config(annotations), observation, DecisionState.initial(known_before), 0.0)
    assert (decision.desired_pods, decision.panic_mode) == (expected_pods, expected_panic)
    assert note in decision.explanation
    assert state.initialised == (known_before or observation.ready_pods > 0)


@pytest.mark.parametrize(
    ("ready", "panic", "held"),
    [
        pytest.param(0, False, 0, id="no-pods-no-panic"),
        pytest.param(1, False, 0, id="one-pod-no-panic"),
        pytest.param(2, True, 2, id="two-pods-panic-holding-2"),
        pytest.param(9, True, 9, id="nine-pods-panic-holding-9"),
    ],
)
def test_a_restarted_decider_starts_in_panic_when_more_than_one_pod_is_ready(ready: int, panic: bool, held: int) -> None:
    """Knative's decider starts in panic with maxPanicPods = ready pods when more than one is ready, so a
    restart never scales down at once; with data below the threshold it holds them for a stable window."""
    config = make_config()
    decision, state = decide(config, Observation(0.0, 0.0, ready), DecisionState.initial(), 100.0)
    assert (decision.panic_mode, state.max_panic_pods) == (panic, held)
    assert state.panic_since_s == (100.0 if panic else None)
    if panic:
        still, _ = decide(config, Observation(0.0, 0.0, ready), state, 100.0 + config.stable_window_s)
        assert still.desired_pods == ready and still.panic_mode


@pytest.mark.parametrize("seed", range(5))
def test_invariants_over_random_runs(seed: int) -> None:
    """Whatever the load, data gaps and pokes: bounds hold, a poke is never answered with zero, no data is
    never a change, zero pods always means the activator is in the path, and nothing raises."""
    rng = random.Random(seed)
    config = make_config(
        rng.choice(
            [
                {},
                {"min-scale": "1", "max-scale": "4"},
                {"scale-down-delay": "10s", "container-concurrency": "5"},
                {"activation-scale": "2", "target-burst-capacity": "0"},
                {"target-burst-capacity": "-1", "window": "6s"},
            ]
        )
    )
    state, ready = DecisionState.initial(), 0
    for tick in range(400):
        roll = rng.random()
        value = None if roll < 0.05 else 0.0 if roll < 0.4 else rng.uniform(0, 300)
        poked = ready == 0 and rng.random() < 0.2
        observation = Observation(value, None if value is None else value * rng.uniform(0.5, 2), ready, poked)
        previous = state.last
        decision, state = decide(config, observation, state, tick * TICK_INTERVAL_S)
        assert decision.desired_pods >= config.min_scale
        assert config.max_scale == 0 or decision.desired_pods <= config.max_scale
        assert not poked or decision.desired_pods >= 1
        assert decision.stale is (value is None)
        if decision.stale and previous is not None and not poked:
            assert decision.desired_pods == previous.desired_pods
        if decision.desired_pods == 0 or ready == 0:
            assert decision.mode == MODE_PROXY
        ready = decision.desired_pods if rng.random() < 0.7 else ready
