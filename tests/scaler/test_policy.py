"""The predictive policy: what it learns from a load history, and how it adjusts Knative's decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest

from kapa.core.contract import (
    ANNOTATION_PREWARM_LEAD,
    ANNOTATION_SCALING_POLICY,
    MODE_PROXY,
    MODE_SERVE,
    knative_annotation,
)
from kapa.core.services import ServiceKey, ServiceSpec
from kapa.core.settings import AutoscalerConfig, ServiceConfig, service_config
from scaler.decision import Decision, DecisionState, Observation, decide
from scaler.policy import (
    Fallback,
    KeepAlive,
    LoadHistory,
    adjust,
    current_silence_s,
    decide_with_policy,
    learn,
)


def make_config(annotations: Mapping[str, str] | None = None, **global_keys: str) -> ServiceConfig:
    """A predictive service's config through the real parsing path (short names are Knative's annotations)."""
    full = {ANNOTATION_SCALING_POLICY: "predictive"}
    full.update({name if "/" in name else knative_annotation(name): value for name, value in (annotations or {}).items()})
    global_config, global_errors = AutoscalerConfig.from_mapping(global_keys)
    config, errors = service_config(global_config, ServiceSpec(ServiceKey("default", "job"), full))
    assert not global_errors and not errors, [str(error) for error in [*global_errors, *errors]]
    return config


def bursts(count: int, silence_s: int, silent_now_s: int, burst: tuple[float, ...] = (3.0,) * 10) -> LoadHistory:
    """`count` bursts (per-second concurrency `burst`) separated by `silence_s` of nothing, then `silent_now_s`
    of nothing up to the decision."""
    values: list[float] = []
    for index in range(count):
        values += [*burst, *([0.0] * (silence_s if index < count - 1 else silent_now_s))]
    return LoadHistory(1.0, tuple(values))


#: A job every 5 min: 8 runs of 10 s, 290 s of silence between them (7 silences to learn from).
def periodic(silent_now_s: int) -> LoadHistory:
    return bursts(8, 290, silent_now_s)


def knatives(desired: int, *, active: bool = True, ready: int = 1, mode: str = MODE_SERVE, stale: bool = False) -> Decision:
    """A decision of Knative's rules, as `decide` makes them."""
    return Decision(desired, 0, False, stale, mode, 0.0, 0.0, 70.0, ready, 0.0, ("stable: ceil(0/70)=0",), active)


# --- learning ------------------------------------------------------------------------------------------------


def test_a_periodic_job_gets_a_prewarm_window_around_its_period() -> None:
    lesson = learn(make_config(), periodic(30))
    assert lesson == KeepAlive(
        linger_s=2.0,  # no pause inside the runs: the shortest linger, one tick
        prewarm_from_s=263.5,  # 290 s less 5 % and a tick, less the 10 s pre-warm lead
        prewarm_until_s=306.5,  # 290 s plus 5 % and a tick
        expected_silence_s=290.0,
        burst_period_s=300.0,
        silences=7,
        cold_starts=1.75,  # 7 silences, the window spans all: (7 - 1) / (7 + 1) of them predicted warm
        idle_pod_s=241.5,  # per silence: 8 s (tick + hand-over) + 290 - 263.5 pre-warmed
        knative_cold_starts=7,
        knative_idle_pod_s=630.0,  # per silence: 60 s stable window + 30 s grace
    )


def test_pauses_inside_bursts_set_the_linger() -> None:
    """Runs of 5 s, a 4 s pause, 5 s: a 4 s silence is part of a burst, so the linger covers it (4 s + 5 % +
    a tick), and only the long silences count as ends of bursts."""
    lesson = learn(make_config(), bursts(8, 290, 30, burst=(3.0,) * 5 + (0.0,) * 4 + (3.0,) * 5))
    assert isinstance(lesson, KeepAlive)
    assert lesson.linger_s == pytest.approx(6.2) and lesson.silences == 7
    assert lesson.prewarm_from_s == pytest.approx(263.5)


def test_the_prewarm_lead_opens_the_window_earlier() -> None:
    lesson = learn(make_config({ANNOTATION_PREWARM_LEAD: "40s"}), periodic(30))
    assert isinstance(lesson, KeepAlive) and lesson.prewarm_from_s == pytest.approx(233.5)


@pytest.mark.parametrize(
    ("history", "reason"),
    [
        pytest.param(bursts(1, 0, 600), "no silence between bursts in the last 10m10s", id="one-burst"),
        pytest.param(LoadHistory(1.0, (2.0,) * 3600), "no silence between bursts in the last 1h", id="steady-load"),
        pytest.param(bursts(3, 290, 30), "fewer than 3 silences longer than the pauses within bursts",
                     id="two-silences-are-not-representative"),
        # Bursts 30 s apart: Knative's rules keep the pod through every silence (no cold start at all), and
        # anything shorter would add cold starts.
        pytest.param(bursts(8, 30, 5), "no schedule beat them on the 7 silences seen", id="silences-within-keep-alive"),
    ],
)
def test_knatives_rules_decide_when_the_history_teaches_nothing_better(history: LoadHistory, reason: str) -> None:
    lesson = learn(make_config(), history)
    assert isinstance(lesson, Fallback) and lesson.reason.startswith(reason)


def test_silences_apart_at_random_are_shortened_but_not_prewarmed() -> None:
    """Silences of 2-9 min in no order: every one outlasts Knative's keep-alive (a cold start each either
    way), and no window spans enough of them to pay: zero early, no pre-warm."""
    values: list[float] = []
    for silence in (130, 530, 250, 410, 190, 470, 310, 370):
        values += [3.0] * 10 + [0.0] * silence
    lesson = learn(make_config(), LoadHistory(1.0, tuple(values)))
    assert isinstance(lesson, KeepAlive)
    assert lesson.prewarm_from_s is None and lesson.linger_s == 2.0
    assert lesson.cold_starts == lesson.knative_cold_starts == 7
    assert lesson.idle_pod_s == 7 * 8.0 < lesson.knative_idle_pod_s


@pytest.mark.parametrize(
    ("values", "step_s", "silence_s"),
    [
        ((0.0, 1.0, 0.5), 1.0, 0.0),
        ((1.0, 0.0, 0.0, 0.0), 1.0, 3.0),
        ((1.0, 0.0, 0.0), 2.0, 4.0),
        ((0.0, 0.0), 1.0, 2.0),
    ],
)
def test_current_silence(values: tuple[float, ...], step_s: float, silence_s: float) -> None:
    assert current_silence_s(LoadHistory(step_s, values)) == silence_s


# --- adjusting Knative's decision ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("silent_s", "knative", "desired", "active", "mode", "note"),
    [
        pytest.param(0, knatives(3), 3, True, MODE_SERVE, None, id="load-knative-decides"),
        pytest.param(2, knatives(3), 3, True, MODE_SERVE, None, id="a-pause-within-the-linger"),
        pytest.param(5, knatives(3), 1, False, MODE_PROXY,
                     "predictive: burst over (silent 5s; pauses within bursts last up to 2s): the activator takes "
                     "over, zero in 3s; Knative's rules would ask for 3", id="burst-over-hand-over"),
        pytest.param(30, knatives(1), 0, False, MODE_PROXY,
                     "predictive: zero early (silent 30s): bursts every ~5m, next expected in 4m20s, pre-warm in "
                     "3m54s; Knative's rules would ask for 1", id="zero-early"),
        pytest.param(270, knatives(0, active=False, ready=0, mode=MODE_PROXY), 1, True, MODE_PROXY,
                     "predictive: pre-warmed 1 pod: bursts every ~5m, next expected in 20s; Knative's rules would "
                     "ask for 0", id="prewarm-pod-starting"),
        pytest.param(280, knatives(0, active=False, ready=1, mode=MODE_PROXY), 1, True, MODE_SERVE,
                     "predictive: pre-warmed 1 pod: bursts every ~5m, next expected in 10s; Knative's rules would "
                     "ask for 0", id="prewarm-pod-ready-serves"),
        pytest.param(400, knatives(0, active=False, ready=0, mode=MODE_PROXY), 0, False, MODE_PROXY, None,
                     id="after-the-window-knative-agrees"),
        pytest.param(400, knatives(1), 0, False, MODE_PROXY,
                     "predictive: zero early (silent 6m40s): no burst came when one was expected; the next request "
                     "gets a cold start; Knative's rules would ask for 1", id="after-the-window-zero"),
    ],
)
def test_a_periodic_job_through_its_silence(
    silent_s: int, knative: Decision, desired: int, active: bool, mode: str, note: str | None
) -> None:
    decision = adjust(make_config(), knative, Observation(0.0, 0.0, knative.ready_pods), periodic(silent_s), True)
    assert (decision.desired_pods, decision.active, decision.mode) == (desired, active, mode)
    if note is None:
        assert decision == knative
    else:
        assert decision.explanation[:-2] == knative.explanation
        assert decision.explanation[-2] == note
        learned = decision.explanation[-1]
        assert learned.startswith("predictive: learned from 7 silences after bursts in the last ")
        assert learned.endswith(": 1.8 cold starts expected and 242 idle pod-s, where Knative's rules had 7 and 630")


@pytest.mark.parametrize(
    ("knative", "observation", "initialised"),
    [
        pytest.param(knatives(1), Observation(0.0, 0.0, 0, poked=True), True, id="poked-the-activator-holds-a-request"),
        pytest.param(knatives(1, stale=True), Observation(None, None, 1), True, id="stale-no-fresh-metrics"),
        pytest.param(knatives(1), Observation(0.0, 0.0, 1), False, id="before-initial-scale-was-reached"),
        # Silent for 30 s by the history, but the 6 s panic window saw load: the history has a hole.
        pytest.param(knatives(1), Observation(0.1, 0.2, 1), True, id="history-disagrees-with-the-panic-window"),
    ],
)
def test_knatives_decision_stands_when_the_policy_must_not_act(
    knative: Decision, observation: Observation, initialised: bool
) -> None:
    decision = adjust(make_config(), knative, observation, periodic(30), initialised)
    assert (decision.desired_pods, decision.active, decision.mode) == (knative.desired_pods, True, knative.mode)
    assert all("predictive: " not in note for note in decision.explanation)


@pytest.mark.parametrize(
    ("annotations", "global_keys", "silent_s", "desired", "active"),
    [
        pytest.param({"min-scale": "1"}, {}, 30, 1, True, id="min-scale-1-never-zero-never-inactive"),
        pytest.param({}, {"enable-scale-to-zero": "false"}, 30, 1, True, id="scale-to-zero-disabled"),
        pytest.param({"min-scale": "2"}, {}, 5, 2, True, id="min-scale-2-after-a-burst"),
        pytest.param({"activation-scale": "2"}, {}, 270, 2, True, id="prewarm-activation-scale"),
        pytest.param({"activation-scale": "2", "max-scale": "1"}, {}, 270, 1, True, id="prewarm-at-most-max-scale"),
        # Three pods idle for 26.5 s before each run cost more than the cold starts they spare (90 pod-s each).
        pytest.param({"activation-scale": "3"}, {}, 270, 0, False, id="three-prewarmed-pods-do-not-pay"),
    ],
)
def test_bounds_still_bind(
    annotations: dict[str, str], global_keys: dict[str, str], silent_s: int, desired: int, active: bool
) -> None:
    decision = adjust(make_config(annotations, **global_keys), knatives(4, ready=4), Observation(0.0, 0.0, 4),
                      periodic(silent_s), True)
    assert (decision.desired_pods, decision.active) == (desired, active)


def test_without_a_history_the_policy_says_so_and_knative_decides() -> None:
    knative = knatives(1)
    decision = adjust(make_config(), knative, Observation(0.0, 0.0, 1), None, True)
    assert decision.desired_pods == 1
    assert decision.explanation[-1] == "predictive policy: no load history yet, Knative's rules decide"


def test_a_fallback_is_explained() -> None:
    decision = adjust(make_config(), knatives(1), Observation(0.0, 0.0, 1), bursts(3, 290, 30), True)
    assert decision.desired_pods == 1
    assert decision.explanation[-1].startswith("predictive policy: Knative's rules decide (fewer than 3 silences")


# --- through the whole decision -----------------------------------------------------------------------------


def running(desired: int, ready: int) -> DecisionState:
    last = knatives(desired, ready=ready)
    return DecisionState(started=True, initialised=True, active_since_s=-1000.0, last=last)


def test_knatives_policy_is_knatives_decision_exactly() -> None:
    """The default policy: a history changes nothing, not even the explanation."""
    config = replace(make_config(), scaling_policy="knative")
    observation = Observation(0.5, 0.0, 1)
    state = running(1, 1)
    assert decide_with_policy(config, observation, periodic(30), state, 100.0) == decide(config, observation, state, 100.0)


def test_the_state_carried_on_is_knatives_own() -> None:
    """The policy takes the pod away, but Knative's timers run as if it had not: a scaler that replays
    Prometheus's history with `decide` alone reaches the same state."""
    config, observation, state = make_config(), Observation(0.5, 0.0, 1), running(1, 1)
    decision, carried = decide_with_policy(config, observation, periodic(30), state, 100.0)
    assert decision.desired_pods == 0
    assert carried == decide(config, observation, state, 100.0)[1]


def test_a_restarted_scaler_prewarms_as_the_one_running_all_along() -> None:
    """The policy's input is the history Prometheus holds, not memory: a scaler that starts 270 s into the
    silence pre-warms the job exactly like one that has been deciding all along."""
    config, history = make_config(), periodic(270)
    all_along = DecisionState(started=True, initialised=True, active_since_s=-1000.0,
                              last=knatives(0, active=False, ready=0, mode=MODE_PROXY), inactive_since_s=-500.0)
    restarted = DecisionState.initial(initialised=True)
    observation = Observation(0.0, 0.0, 0)
    decisions = [decide_with_policy(config, observation, history, state, 1000.0)[0] for state in (all_along, restarted)]
    assert [(d.desired_pods, d.active) for d in decisions] == [(1, True), (1, True)]
    assert decisions[0].explanation[-2:] == decisions[1].explanation[-2:]
