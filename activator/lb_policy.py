"""Which ready pod gets the next request: Knative's activator policies, as pure functions over trackers.

- containerConcurrency 0 (no limit): the better of two random choices (fewer requests in flight), which
  spreads load nearly as well as least-loaded without scanning every pod.
- containerConcurrency 1..3: first available, in a stable pod order, so small pods fill one at a time and
  a request never queues behind another on a pod that has only one or two slots.
- containerConcurrency above 3: round robin over the pods with a free slot.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kapa.core.services import Endpoint


@dataclass(eq=False)
class PodTracker:
    """One pod's requests in flight from this activator, against this activator's part of the pod's limit
    (None: no limit; 0: the pod takes nothing from this activator, see activator.peers)."""

    endpoint: Endpoint
    capacity: int | None
    in_flight: int = 0
    #: Probed ready and in the pick list; an unready pod keeps its count so slots are never over-granted.
    ready: bool = field(default=False)

    def has_free_slot(self) -> bool:
        return self.capacity is None or self.in_flight < self.capacity


Policy = Callable[[Sequence[PodTracker]], "PodTracker | None"]


def first_available(pods: Sequence[PodTracker]) -> PodTracker | None:
    for pod in pods:
        if pod.has_free_slot():
            return pod
    return None


class RoundRobin:
    """Round robin that skips pods without a free slot."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, pods: Sequence[PodTracker]) -> PodTracker | None:
        count = len(pods)
        for step in range(count):
            index = (self._next + step) % count
            if pods[index].has_free_slot():
                self._next = index + 1
                return pods[index]
        return None


class BestOfTwo:
    """The less loaded of two distinct random pods (power of two choices); pods here have no limit."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def __call__(self, pods: Sequence[PodTracker]) -> PodTracker | None:
        count = len(pods)
        if count <= 1:
            return pods[0] if pods else None
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:
            second += 1
        a, b = pods[first], pods[second]
        return a if a.in_flight <= b.in_flight else b


def policy_for(container_concurrency: int, rng: random.Random | None = None) -> Policy:
    """Knative's choice of policy by containerConcurrency."""
    if container_concurrency == 0:
        return BestOfTwo(rng)
    if container_concurrency <= 3:
        return first_available
    return RoundRobin()
