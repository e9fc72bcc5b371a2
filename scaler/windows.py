"""Window averages over per-second buckets, as Knative's autoscaler keeps its metrics.

The live scaler asks Prometheus for these averages; the simulator, which has the whole per-second series in
memory, computes them here. Both follow Knative's rules: one bucket per second, a window ending at the
last complete second, a partial window while fewer seconds than the window have elapsed (averaged over the
seconds that exist), and no data only when no second exists at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from kapa.core.settings import AGGREGATION_WEIGHTED_EXPONENTIAL

#: Knative's weighted-exponential average gives the window's buckets weights summing to this.
_WEIGHT_MASS = 0.9999
#: ... but never lets the newest bucket weigh less than this, so long windows still follow the load.
_MIN_SMOOTHING = 0.2


def window_buckets(window_s: float) -> int:
    """How many 1 s buckets a window spans (at least one)."""
    return max(1, round(window_s))


def smoothing_coefficient(buckets: int) -> float:
    """Weight of the newest bucket in Knative's weighted-exponential average over `buckets` buckets."""
    return max(1.0 - (1.0 - _WEIGHT_MASS) ** (1.0 / buckets), _MIN_SMOOTHING)


class BucketSeries:
    """A per-second series (bucket i covers [i, i+1) seconds) with O(1) linear window averages.

    Built whole from a trace, or grown one complete second at a time while a simulation runs.
    """

    __slots__ = ("_values", "_prefix")

    def __init__(self, values: Sequence[float] = ()) -> None:
        self._values = list(values)
        self._prefix = [0.0, *accumulate(self._values)]

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> float:
        return self._values[index]

    def append(self, value: float) -> None:
        """Add the next complete second."""
        self._values.append(value)
        self._prefix.append(self._prefix[-1] + value)

    def values(self) -> list[float]:
        return list(self._values)

    def recent(self, end: int, buckets: int) -> tuple[float, ...]:
        """The values of the `buckets` buckets before index `end` (fewer when fewer exist), oldest first."""
        end = min(end, len(self._values))
        return tuple(self._values[max(0, end - buckets) : end])

    def average(self, end: int, buckets: int, aggregation: str) -> float | None:
        """Average of the `buckets` buckets before index `end` (exclusive); None when there is none.

        `end` is the number of complete seconds at the moment of the decision.
        """
        end = min(end, len(self._values))
        start = max(0, end - buckets)
        if end <= start:
            return None
        if aggregation == AGGREGATION_WEIGHTED_EXPONENTIAL:
            return self._weighted_exponential(start, end, buckets)
        return (self._prefix[end] - self._prefix[start]) / (end - start)

    def _weighted_exponential(self, start: int, end: int, buckets: int) -> float:
        # Newest bucket first, each older one weighing (1 - coefficient) times less. The weights are
        # normalised over the buckets that exist, so a partial window is an average like the linear one.
        coefficient = smoothing_coefficient(buckets)
        weight, total, mass = coefficient, 0.0, 0.0
        values = self._values
        for index in range(end - 1, start - 1, -1):
            total += values[index] * weight
            mass += weight
            weight *= 1.0 - coefficient
        return total / mass
