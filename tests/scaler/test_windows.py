"""Window averages over per-second buckets, linear and weighted-exponential."""

from __future__ import annotations

import pytest

from kapa.core.settings import AGGREGATION_LINEAR, AGGREGATION_WEIGHTED_EXPONENTIAL
from scaler.windows import BucketSeries, smoothing_coefficient, window_buckets


@pytest.mark.parametrize(
    ("values", "end", "buckets", "expected"),
    [
        pytest.param([1, 2, 3, 4, 5, 6], 6, 3, 5.0, id="last-three"),
        pytest.param([1, 2, 3, 4, 5, 6], 4, 2, 3.5, id="window-ending-earlier"),
        pytest.param([4, 8], 2, 60, 6.0, id="partial-window-averages-what-exists"),
        pytest.param([0, 0, 9], 3, 3, 3.0, id="zeros-count"),
        pytest.param([1, 2, 3], 10, 2, 2.5, id="end-past-the-data-is-clamped"),
        pytest.param([], 0, 6, None, id="nothing-is-no-data"),
        pytest.param([5], 0, 6, None, id="no-complete-second-is-no-data"),
    ],
)
def test_linear_average(values: list[float], end: int, buckets: int, expected: float | None) -> None:
    assert BucketSeries(values).average(end, buckets, AGGREGATION_LINEAR) == expected


def test_growing_series_matches_whole_series() -> None:
    values = [float(v % 7) for v in range(100)]
    grown = BucketSeries()
    for value in values:
        grown.append(value)
    whole = BucketSeries(values)
    for end in (1, 10, 61, 100):
        assert grown.average(end, 60, AGGREGATION_LINEAR) == pytest.approx(whole.average(end, 60, AGGREGATION_LINEAR))
    assert len(grown) == 100 and grown[3] == 3.0 and grown.values() == values


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([5.0] * 10, 5.0, id="constant-stays-constant"),
        pytest.param([0.0] * 9 + [10.0], None, id="newest-weighs-most"),
    ],
)
def test_weighted_exponential_average(values: list[float], expected: float | None) -> None:
    series = BucketSeries(values)
    weighted = series.average(len(values), len(values), AGGREGATION_WEIGHTED_EXPONENTIAL)
    linear = series.average(len(values), len(values), AGGREGATION_LINEAR)
    assert weighted is not None and linear is not None
    if expected is not None:
        assert weighted == pytest.approx(expected)
    else:
        assert weighted > linear  # the recent burst counts for more than a tenth
        assert weighted == pytest.approx(
            10.0
            * smoothing_coefficient(10)
            / sum((1 - smoothing_coefficient(10)) ** i * smoothing_coefficient(10) for i in range(10))
        )


@pytest.mark.parametrize(("buckets", "low", "high"), [(6, 0.78, 0.79), (60, 0.2, 0.2), (1, 0.9999, 0.9999)])
def test_smoothing_coefficient(buckets: int, low: float, high: float) -> None:
    assert low <= round(smoothing_coefficient(buckets), 4) <= high


@pytest.mark.parametrize(("window_s", "buckets"), [(60.0, 60), (6.0, 6), (0.6, 1), (1.4, 1), (12.0, 12)])
def test_window_buckets(window_s: float, buckets: int) -> None:
    assert window_buckets(window_s) == buckets
