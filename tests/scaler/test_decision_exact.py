"""The decision's whole output, exactly, where test_decision.py's rule-by-rule checks leave a change unseen.

Each case compares every field of the Decision (the explanation included: it is how `kapa explain` answers
"why N pods?") and, where the rule is about what is carried to the next tick, every field of the state.
The cases sit at the edges mutation testing found unguarded (a bound met exactly, a note that must not
appear, a clock carried through a tick without data); see docs/mutation.md. All values are hand-computed:
target 7 per pod (`target: 7` at 100 %) unless a case says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from kapa.core.contract import MODE_PROXY, MODE_SERVE
from kapa.core.settings import ServiceConfig
from scaler.decision import Decision, DecisionState, Observation, _record_delay, decide, delegated_decision
from tests.scaler.test_decision import make_config

SEVEN = {"target": "7", "target-utilization-percentage": "100", "target-burst-capacity": "0"}


def seven(annotations: Mapping[str, str] | None = None, **global_keys: str) -> ServiceConfig:
    """Target 7 per pod, no burst capacity asked for (excess 0: serve whenever a pod is ready)."""
    return make_config({**SEVEN, **(annotations or {})}, **global_keys)


def last(desired: int, ready: int, excess: int = 0, mode: str = MODE_SERVE) -> Decision:
    return Decision(desired, excess, False, False, mode, 7.0, 7.0, 7.0, ready, -2.0, ())


def state(
    desired: int = 1, ready: int = 1, *, active_since: float | None = -1000.0, **fields: object
) -> DecisionState:
    """A service decided for a while: initialised, active since `active_since`, last at `desired` pods."""
    return DecisionState(
        started=True, initialised=True, active_since_s=active_since, last=last(desired, ready), **fields  # type: ignore[arg-type]
    )


def serve(desired: int, stable: float, panic: float, ready: int, *notes: str, panic_mode: bool = False) -> Decision:
    """What a tick at t=0 with target 7 and excess 0 decides when a pod is ready."""
    return Decision(desired, 0, panic_mode, False, MODE_SERVE, stable, panic, 7.0, ready, 0.0, notes)


def ceil_note(stable: float, panic: float, stable_pods: int, panic_pods: int) -> str:
    return f"stable: ceil({stable:g}/7)={stable_pods}; panic window: ceil({panic:g}/7)={panic_pods}"


@pytest.mark.parametrize(
    ("config", "before", "observation", "expected"),
    [
        pytest.param(
            seven(max_scale_up_rate="2"), state(2, 2), Observation(28.0, 0.0, 2),
            serve(4, 28.0, 0.0, 2, ceil_note(28, 0, 4, 0)), id="up-rate-met-exactly-is-no-limit",
        ),
        pytest.param(
            seven(), state(4, 4), Observation(14.0, 14.0, 4),
            serve(2, 14.0, 14.0, 4, ceil_note(14, 14, 2, 2)), id="down-rate-met-exactly-is-no-floor",
        ),
        pytest.param(
            # 10 pods in the panic window, but at most ceil(2 x 2) = 4 a tick: panic over 4 / 2 ready.
            seven(max_scale_up_rate="2"), state(2, 2), Observation(7.0, 70.0, 2),
            serve(4, 7.0, 70.0, 2, ceil_note(7, 70, 1, 10), "panic entered: 4/2 ready >= 2", panic_mode=True),
            id="panic-count-limited-by-the-up-rate",
        ),
        pytest.param(
            seven({"activation-scale": "2"}), state(1, 1), Observation(7.0, 0.0, 1),
            serve(2, 7.0, 0.0, 1, ceil_note(7, 0, 1, 0), "activation-scale raises 1 to 2"), id="activation-2",
        ),
        pytest.param(
            seven({"activation-scale": "2"}), state(2, 2), Observation(14.0, 0.0, 2),
            serve(2, 14.0, 0.0, 2, ceil_note(14, 0, 2, 0)), id="activation-met-exactly",
        ),
        pytest.param(
            # The panic window's 1 pod is raised to activation-scale 3 too, and 3 / 1 ready is a panic.
            seven({"activation-scale": "3"}), state(1, 1), Observation(0.0, 7.0, 1),
            serve(3, 0.0, 7.0, 1, ceil_note(0, 7, 0, 1), "panic entered: 3/1 ready >= 2", panic_mode=True),
            id="activation-raises-the-panic-count",
        ),
        pytest.param(
            # Idle, yet the panic count is raised to the scale-down floor (2) and then to activation-scale:
            # 10 / 4 ready is a panic (Knative's decider orders the bounds the same way).
            seven({"activation-scale": "10"}), state(4, 4), Observation(0.0, 0.0, 4),
            serve(10, 0.0, 0.0, 4, ceil_note(0, 0, 0, 0), "max-scale-down-rate 2 keeps at least 2",
                  "activation-scale raises 2 to 10",
                  "panic entered: 10/4 ready >= 2", panic_mode=True),
            id="activation-raises-the-floored-panic-count",
        ),
        pytest.param(
            seven(), state(4, 2, panic_since_s=-2.0, max_panic_pods=4), Observation(28.0, 28.0, 2),
            serve(4, 28.0, 28.0, 2, ceil_note(28, 28, 4, 4), "panic renewed: 4/2 ready >= 2", panic_mode=True),
            id="panic-at-its-highest-count-holds-nothing",
        ),
        pytest.param(
            seven(), state(1, 1), Observation(7.0, 7.0, 1, poked=True),
            serve(1, 7.0, 7.0, 1, ceil_note(7, 7, 1, 1)), id="a-poke-with-a-pod-wanted-wakes-nothing",
        ),
        pytest.param(
            seven({"min-scale": "2", "max-scale": "2"}), state(2, 2), Observation(14.0, 0.0, 2),
            serve(2, 14.0, 0.0, 2, ceil_note(14, 0, 2, 0)), id="bounds-met-exactly-say-nothing",
        ),
        pytest.param(
            seven({"max-scale": "1"}), state(1, 1), Observation(14.0, 0.0, 1),
            serve(1, 14.0, 0.0, 1, ceil_note(14, 0, 2, 0), "max-scale 1"), id="max-scale-1",
        ),
        pytest.param(
            seven({"initial-scale": "2"}), DecisionState.initial(), Observation(14.0, 0.0, 0),
            Decision(2, 0, False, False, MODE_PROXY, 14.0, 0.0, 7.0, 0, 0.0, (ceil_note(14, 0, 2, 0),)),
            id="initial-scale-met-by-the-load-says-nothing",
        ),
        pytest.param(
            # A negative rate (never from a counter) asks for no pod, not for -1.
            seven(), state(1, 1), Observation(-7.0, 0.0, 1),
            Decision(1, 0, False, False, MODE_PROXY, -7.0, 0.0, 7.0, 1, 0.0,
                     (ceil_note(-7, 0, 0, 0), "grace period: 30s until zero"), active=False),
            id="negative-value",
        ),
    ],
)
def test_one_tick(config: ServiceConfig, before: DecisionState, observation: Observation, expected: Decision) -> None:
    assert decide(config, observation, before, 0.0)[0] == expected


def test_leaving_panic_forgets_its_highest_count() -> None:
    config = seven()
    before = state(4, 2, panic_since_s=0.0, max_panic_pods=4)
    decision, after = decide(config, Observation(7.0, 7.0, 2), before, 62.0)
    assert decision.explanation == (ceil_note(7, 7, 1, 1), "panic left: below threshold for a 60s stable window")
    assert (decision.desired_pods, after.panic_since_s, after.max_panic_pods) == (1, None, 0)


@pytest.mark.parametrize(
    ("delay", "counts", "expected", "held"),
    [
        pytest.param("1s", [4, 1], [4, 4], "scale-down-delay 1s holds 4", id="one-second-delay-holds"),
        pytest.param("1s", [4, 4], [4, 4], None, id="holding-the-same-count-says-nothing"),
    ],
)
def test_scale_down_delay_notes(delay: str, counts: list[int], expected: list[int], held: str | None) -> None:
    config = seven({"scale-down-delay": delay}, max_scale_down_rate="4")
    current = state(4, 4)
    decisions = []
    for now, count in zip((0.0, 0.5), counts, strict=True):
        decision, current = decide(config, Observation(7.0 * count, 0.0, 4), current, now)
        decisions.append(decision)
    assert [d.desired_pods for d in decisions] == expected
    assert [note for note in decisions[-1].explanation if note.startswith("scale-down-delay")] == ([held] if held else [])


@pytest.mark.parametrize("window", [(), ((0.0, 3),)])
def test_without_a_delay_no_window_is_kept(window: tuple[tuple[float, int], ...]) -> None:
    _, after = decide(seven(), Observation(7.0, 7.0, 1), state(delay_window=window), 0.0)
    assert after.delay_window == ()


def test_a_first_decision_with_one_idle_pod_keeps_it_for_a_stable_window() -> None:
    decision, after = decide(make_config(), Observation(0.0, 0.0, 1), DecisionState.initial(), 5.0)
    assert decision == Decision(
        1, -111, False, False, MODE_PROXY, 0.0, 0.0, 70.0, 1, 5.0,
        ("stable: ceil(0/70)=0; panic window: ceil(0/70)=0", "idle: keeps 1 for 60s more of the stable window"),
    )
    assert (after.active_since_s, after.initialised) == (5.0, True)


def test_a_first_decision_at_zero_pods_is_not_an_activation() -> None:
    config = make_config({"initial-scale": "0"}, allow_zero_initial_scale="true")
    decision, after = decide(config, Observation(0.0, 0.0, 0), DecisionState.initial(), 5.0)
    assert (decision.desired_pods, decision.explanation[-1]) == (0, "idle: stays at zero")
    assert (after.active_since_s, after.inactive_since_s) == (None, 5.0)


@pytest.mark.parametrize(("inactive_since", "kept"), [(50.0, 50.0), (None, 100.0)])
def test_at_zero_the_inactive_clock_is_kept(inactive_since: float | None, kept: float) -> None:
    before = state(0, 0, inactive_since_s=inactive_since)
    _, after = decide(seven(), Observation(0.0, 0.0, 0), before, 100.0)
    assert after.inactive_since_s == kept


def test_a_state_without_an_activation_time_goes_inactive_at_once() -> None:
    decision, after = decide(make_config(), Observation(0.0, 0.0, 1), state(active_since=None), 10.0)
    assert (decision.desired_pods, decision.active, decision.explanation[-1]) == (1, False, "grace period: 30s until zero")
    assert after.inactive_since_s == 10.0


@pytest.mark.parametrize(
    ("now", "desired", "note"),
    [(29.5, 1, "grace period: 0s until zero"), (30.0, 0, "scale to zero: idle for a stable window and 30s grace")],
)
def test_the_grace_period_ends_exactly(now: float, desired: int, note: str) -> None:
    before = state(1, 1, inactive_since_s=0.0)
    decision, _ = decide(make_config(), Observation(0.0, 0.0, 1), before, now)
    assert (decision.desired_pods, decision.explanation[-1]) == (desired, note)


def test_scale_to_zero_disabled_says_so() -> None:
    decision, _ = decide(make_config(enable_scale_to_zero="false"), Observation(0.0, 0.0, 1), state(), 0.0)
    assert (decision.desired_pods, decision.explanation[-1]) == (1, "enable-scale-to-zero false: keeps 1")


def test_a_poke_while_active_restarts_the_idle_clock() -> None:
    config = make_config()
    _, poked = decide(config, Observation(35.0, 35.0, 1, poked=True), state(active_since=0.0), 100.0)
    assert poked.last_poke_s == 100.0
    decision, after = decide(config, Observation(0.0, 0.0, 1), poked, 110.0)
    assert decision.explanation[-1] == "idle: keeps 1 for 50s more of the stable window"
    assert after.last_poke_s == 100.0


def test_a_pod_left_at_zero_does_not_restart_the_idle_clock() -> None:
    """Decided to zero last tick, one pod still ready (terminating): zero stays zero."""
    decision, _ = decide(make_config(), Observation(0.0, 0.0, 1), state(0, 1), 100.0)
    assert (decision.desired_pods, decision.explanation[-1]) == (0, "idle: stays at zero")


def test_a_service_waking_from_zero_is_active_from_now() -> None:
    _, after = decide(make_config(), Observation(35.0, 35.0, 0), state(0, 0, active_since=0.0), 500.0)
    assert (after.active_since_s, after.inactive_since_s) == (500.0, None)


# --- no data: the last decision held, and the clocks carried --------------------------------------------------------

HELD = "no data: holds the last decision of {} pods"


@pytest.mark.parametrize(
    ("before", "ready", "expected"),
    [
        pytest.param(
            DecisionState(started=True, initialised=True, active_since_s=10.0, last=last(3, 3, excess=7)), 3,
            Decision(3, 7, False, True, MODE_SERVE, None, None, 7.0, 3, 20.0, (HELD.format(3),)),
            id="same-pods-same-ready-keeps-the-last-excess",
        ),
        pytest.param(
            DecisionState(started=True, initialised=True, active_since_s=10.0, last=last(3, 3, excess=7)), 2,
            Decision(3, 0, False, True, MODE_SERVE, None, None, 7.0, 2, 20.0, (HELD.format(3),)),
            id="ready-changed-recomputes-with-no-panic-value",
        ),
        pytest.param(
            DecisionState(started=True, initialised=True, active_since_s=10.0, last=last(1, 1)), 0,
            Decision(1, 0, False, True, MODE_PROXY, None, None, 7.0, 0, 20.0, (HELD.format(1),)),
            id="no-pod-ready-is-proxy",
        ),
        pytest.param(
            DecisionState(started=True, initialised=True, inactive_since_s=12.0, last=last(0, 0)), 1,
            Decision(0, 0, False, True, MODE_PROXY, None, None, 7.0, 1, 20.0, (HELD.format(0),), active=False),
            id="zero-pods-is-proxy-and-inactive",
        ),
    ],
)
def test_no_data_holds_the_last_decision(before: DecisionState, ready: int, expected: Decision) -> None:
    decision, after = decide(seven(), Observation(None, None, ready), before, 20.0)
    assert decision == expected
    assert after == DecisionState(
        started=True, initialised=True, active_since_s=before.active_since_s, inactive_since_s=before.inactive_since_s,
        last=decision,
    )


def test_no_data_recomputes_the_excess_without_a_panic_value() -> None:
    config = make_config()  # total 100 per pod, target-burst-capacity 211
    before = DecisionState(started=True, initialised=True, active_since_s=0.0, last=last(3, 2, excess=-11))
    decision, _ = decide(config, Observation(None, None, 3), before, 2.0)
    assert (decision.excess_burst_capacity, decision.mode) == (3 * 100 - 211, MODE_SERVE)


def test_no_data_carries_every_clock() -> None:
    before = DecisionState(
        started=True, initialised=True, panic_since_s=4.0, max_panic_pods=6, active_since_s=1.0, last_poke_s=3.0,
        delay_window=((4.0, 6),), last=last(6, 6),
    )
    decision, after = decide(seven(), Observation(None, 14.0, 6), before, 8.0)
    assert decision == Decision(6, 0, True, True, MODE_SERVE, None, 14.0, 7.0, 6, 8.0, (HELD.format(6),))
    assert after == DecisionState(
        started=True, initialised=True, panic_since_s=4.0, max_panic_pods=6, active_since_s=1.0, last_poke_s=3.0,
        delay_window=((4.0, 6),), last=decision,
    )


def test_no_data_keeps_a_usable_stable_value() -> None:
    decision, _ = decide(seven(), Observation(5.0, None, 1), state(), 0.0)
    assert (decision.stale, decision.stable_value, decision.panic_value) == (True, 5.0, None)


@pytest.mark.parametrize(
    ("window", "now", "desired", "delay_s", "expected"),
    [
        # Records older than the delay drop off the front: here the first two (horizon 35 - 20 = 15).
        pytest.param(((0.0, 5), (10.0, 4), (20.0, 3)), 35.0, 2, 20.0, ((20.0, 3), (35.0, 2)), id="two-expire"),
        pytest.param(((0.0, 5), (10.0, 4), (20.0, 3)), 25.0, 2, 20.0, ((10.0, 4), (20.0, 3), (25.0, 2)), id="one-expires"),
        pytest.param(((0.0, 5), (10.0, 4)), 30.0, 4, 20.0, ((30.0, 4),), id="a-record-delay-old-is-out"),
        # Records not above the new count can never be the maximum again: dropped from the back.
        pytest.param(((0.0, 5), (10.0, 4), (20.0, 3)), 25.0, 4, 60.0, ((0.0, 5), (25.0, 4)), id="equal-and-lower-drop"),
        pytest.param(((0.0, 3),), 5.0, 3, 60.0, ((5.0, 3),), id="an-equal-count-is-replaced"),
        pytest.param(((0.0, 5), (10.0, 2)), 15.0, 3, 60.0, ((0.0, 5), (15.0, 3)), id="only-the-last-lower-drops"),
    ],
)
def test_the_delay_window_keeps_only_possible_maxima(
    window: tuple[tuple[float, int], ...], now: float, desired: int, delay_s: float, expected: tuple[tuple[float, int], ...]
) -> None:
    assert _record_delay(window, now, desired, delay_s) == expected


@pytest.mark.parametrize(
    ("before", "poked", "active_since", "inactive_since"),
    [
        pytest.param(state(1, 1, inactive_since_s=40.0), False, -1000.0, None, id="a-held-pod-is-active-again"),
        pytest.param(state(5, 5, active_since=None), False, 50.0, None, id="active-from-now-if-never-before"),
        pytest.param(state(0, 0, active_since=10.0, inactive_since_s=20.0), True, 50.0, None, id="woken-by-a-poke"),
        pytest.param(state(0, 0, active_since=10.0, inactive_since_s=20.0), False, 10.0, 20.0, id="zero-stays-inactive"),
    ],
)
def test_no_data_activity_clocks(
    before: DecisionState, poked: bool, active_since: float | None, inactive_since: float | None
) -> None:
    decision, after = decide(seven(), Observation(None, None, 0, poked), before, 50.0)
    assert (after.active_since_s, after.inactive_since_s) == (active_since, inactive_since)
    assert decision.active is (decision.desired_pods > 0)


@pytest.mark.parametrize(
    ("annotations", "woken"),
    [({"activation-scale": "2"}, 2), ({"activation-scale": "3", "max-scale": "2"}, 2), ({"activation-scale": "3", "max-scale": "1"}, 1)],
)
def test_a_poke_without_data_wakes_activation_scale_within_max_scale(annotations: dict[str, str], woken: int) -> None:
    decision, _ = decide(seven(annotations), Observation(None, None, 0, poked=True), state(0, 0), 0.0)
    assert decision.desired_pods == woken
    assert decision.explanation[-1] == f"poke: held request, wakes {woken}"


def test_decision_json_names_every_field() -> None:
    decision = Decision(3, -2, True, False, MODE_PROXY, 1.5, 2.5, 7.0, 2, 4.0, ("why",), active=False, delegated=True)
    assert decision.to_json() == {
        "desired_pods": 3, "excess_burst_capacity": -2, "panic_mode": True, "stale": False, "mode": MODE_PROXY,
        "stable_value": 1.5, "panic_value": 2.5, "target": 7.0, "ready_pods": 2, "at_s": 4.0, "explanation": ["why"],
        "active": False, "delegated": True,
    }


@pytest.mark.parametrize(
    ("annotations", "ready", "mode", "why"),
    [
        pytest.param({}, 0, MODE_PROXY,
                     "scaled by the Kubernetes HPA (hpa.autoscaling.knative.dev) on cpu, target 80% of the pods' cpu "
                     "requests, between 1 and any number of pods; Kapa only routes it", id="cpu-defaults"),
        pytest.param({}, 1, MODE_SERVE,
                     "scaled by the Kubernetes HPA (hpa.autoscaling.knative.dev) on cpu, target 80% of the pods' cpu "
                     "requests, between 1 and any number of pods; Kapa only routes it", id="one-pod-ready-serves"),
        pytest.param({"metric": "memory", "target": "256", "min-scale": "2", "max-scale": "5"}, 3, MODE_SERVE,
                     "scaled by the Kubernetes HPA (hpa.autoscaling.knative.dev) on memory, target 256 MiB of memory "
                     "per pod, between 2 and 5 pods; Kapa only routes it", id="memory-bounded"),
    ],
)
def test_an_hpa_service_is_only_routed(annotations: dict[str, str], ready: int, mode: str, why: str) -> None:
    config = make_config({"class": "hpa.autoscaling.knative.dev", **annotations})
    assert delegated_decision(config, ready, 9.0) == Decision(
        ready, 0, False, False, mode, None, None, config.total_target, ready, 9.0, (why,), delegated=True
    )
