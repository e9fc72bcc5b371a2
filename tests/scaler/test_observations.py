"""What the loop reads from a tick's snapshot: the evidence that a service ran before the scaler saw it."""

from __future__ import annotations

import pytest

from kapa.core.contract import METRIC_CONCURRENCY
from kapa.core.services import ServiceKey
from scaler.observations import MetricsSnapshot, WindowQuery, existed_before

KEY = ServiceKey("shop", "cart")
OTHER = ServiceKey("shop", "other")
STABLE = WindowQuery(METRIC_CONCURRENCY, 60.0)
PANIC = WindowQuery(METRIC_CONCURRENCY, 6.0)


@pytest.mark.parametrize(
    ("snapshot", "replicas", "expected"),
    [
        pytest.param(MetricsSnapshot(0.0, {STABLE: {OTHER: 1.0}}), None, False, id="no-series-unknown-workload"),
        pytest.param(MetricsSnapshot(0.0, {STABLE: {OTHER: 1.0}}), 1, False, id="no-series-workload-at-one"),
        pytest.param(MetricsSnapshot(0.0, {STABLE: {OTHER: 1.0}}), 0, True, id="workload-set-to-zero"),
        pytest.param(MetricsSnapshot(0.0, {STABLE: {KEY: 0.5}}), None, True, id="stable-window-activity"),
        pytest.param(MetricsSnapshot(0.0, {STABLE: {KEY: 0.0}, PANIC: {KEY: 0.0}}), None, False,
                     id="zero-series-of-a-new-service"),
        pytest.param(MetricsSnapshot(0.0, {PANIC: {KEY: 2.0}}), 3, True, id="panic-window-series"),
        pytest.param(MetricsSnapshot.unavailable(0.0), None, False, id="stale-snapshot-knows-nothing"),
        pytest.param(MetricsSnapshot.unavailable(0.0), 0, True, id="stale-snapshot-workload-at-zero"),
    ],
)
def test_existed_before(snapshot: MetricsSnapshot, replicas: int | None, expected: bool) -> None:
    assert existed_before(snapshot, (STABLE, PANIC), KEY, replicas) is expected
