"""Pod choice by containerConcurrency, as Knative's activator does it."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kapa.core.services import Endpoint

from activator.lb_policy import BestOfTwo, PodTracker, RoundRobin, first_available, policy_for


def pods(*in_flight: int, capacity: int | None) -> list[PodTracker]:
    return [PodTracker(Endpoint("10.0.0.1", 8000 + i), capacity, n, ready=True) for i, n in enumerate(in_flight)]


@pytest.mark.parametrize(
    ("in_flight", "capacity", "expected"),
    [
        ((0, 0, 0), 1, 0),
        ((1, 0, 0), 1, 1),
        ((1, 1, 0), 1, 2),
        ((1, 1, 1), 1, None),
        ((2, 3, 1), 3, 0),
        ((), 1, None),
        ((0, 0), 0, None),  # no part of these pods belongs to this activator (activator.peers)
    ],
)
def test_first_available_fills_pods_in_order(in_flight: tuple[int, ...], capacity: int, expected: int | None) -> None:
    trackers = pods(*in_flight, capacity=capacity)
    chosen = first_available(trackers)
    assert (None if chosen is None else trackers.index(chosen)) == expected


def test_round_robin_rotates_and_skips_full_pods() -> None:
    trackers = pods(0, 10, 0, 0, capacity=10)
    policy = RoundRobin()
    picks = [trackers.index(policy(trackers)) for _ in range(6)]  # type: ignore[arg-type]
    assert picks == [0, 2, 3, 0, 2, 3]
    assert RoundRobin()(pods(10, 10, capacity=10)) is None


def test_best_of_two_prefers_the_less_loaded_and_spreads() -> None:
    policy = BestOfTwo(random.Random(7))
    trackers = pods(5, 0, capacity=None)
    assert all(policy(trackers) is trackers[1] for _ in range(20))  # two pods: always both compared
    trackers = pods(0, 0, 0, 0, capacity=None)
    counts: Counter[int] = Counter()
    for _ in range(400):
        chosen = policy(trackers)
        assert chosen is not None
        chosen.in_flight += 1
        counts[trackers.index(chosen)] += 1
    assert max(counts.values()) - min(counts.values()) <= 4  # nearly even
    assert policy([]) is None


@pytest.mark.parametrize(
    ("concurrency", "kind"),
    [(0, BestOfTwo), (1, type(first_available)), (3, type(first_available)), (4, RoundRobin), (100, RoundRobin)],
)
def test_policy_follows_container_concurrency(concurrency: int, kind: type) -> None:
    assert isinstance(policy_for(concurrency), kind)


class _ScriptedRandom(random.Random):
    """Draws given in advance, and the bound each draw was asked for."""

    def __init__(self, *draws: int) -> None:
        super().__init__(0)
        self.draws = list(draws)
        self.bounds: list[int] = []

    def randrange(self, stop: int) -> int:  # type: ignore[override]
        self.bounds.append(stop)
        return self.draws.pop(0)


@pytest.mark.parametrize(
    ("in_flight", "draws", "expected"),
    [
        # The second draw is over the other count - 1 pods: a draw at or past the first is shifted up by one.
        pytest.param((0, 5, 3), (1, 1), 2, id="second-skips-the-first-and-the-lighter-wins"),
        pytest.param((0, 5, 3), (1, 0), 0, id="second-before-the-first"),
        pytest.param((4, 1, 9), (0, 0), 1, id="draws-0-0-compare-pods-0-and-1"),
        pytest.param((2, 2), (1, 0), 1, id="a-tie-goes-to-the-first-draw"),
    ],
)
def test_best_of_two_compares_two_distinct_pods(in_flight: tuple[int, ...], draws: tuple[int, int], expected: int) -> None:
    rng = _ScriptedRandom(*draws)
    trackers = pods(*in_flight, capacity=None)
    assert trackers.index(BestOfTwo(rng)(trackers)) == expected  # type: ignore[arg-type]
    assert rng.bounds == [len(in_flight), len(in_flight) - 1]


def test_best_of_two_with_one_pod_draws_nothing() -> None:
    rng = _ScriptedRandom()
    only = pods(7, capacity=None)
    assert BestOfTwo(rng)(only) is only[0] and rng.bounds == []


def test_policy_for_no_limit_draws_from_the_given_generator() -> None:
    rng = _ScriptedRandom(1, 1)
    trackers = pods(0, 5, 3, capacity=None)
    assert policy_for(0, rng)(trackers) is trackers[2] and rng.bounds == [3, 2]
