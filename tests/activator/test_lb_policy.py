"""Pod choice by containerConcurrency, as Knative's activator does it."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kapa.services import Endpoint

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
