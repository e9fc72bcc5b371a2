"""The Prometheus query layer: PromQL shape (pure) and answers from a real Prometheus with known rates."""

from __future__ import annotations

import logging
import time

import pytest

from kapa import contract
from kapa.prometheus_server import PrometheusServer
from kapa.services import ServiceKey
from scaler.observations import MetricsSnapshot, WindowQuery, observed_value
from scaler.prometheus_source import PrometheusMetrics, PrometheusQueryError, parse_vector, promql_duration, window_promql
from tests.scaler.conftest import ExporterControl, query, wait_until
from tests.support import free_port

HELLO = ServiceKey("default", "hello")
OTHER = ServiceKey("team-a", "other")
AT_ZERO = ServiceKey("default", "at-zero")
STABLE = WindowQuery(contract.METRIC_CONCURRENCY, 60.0)
PANIC = WindowQuery(contract.METRIC_CONCURRENCY, 6.0)
RPS = WindowQuery(contract.METRIC_RPS, 6.0)


@pytest.mark.parametrize(
    ("seconds", "expected"), [(60.0, "60000ms"), (6.0, "6000ms"), (0.6, "600ms"), (6.5, "6500ms"), (0.0001, "1ms")]
)
def test_promql_duration(seconds: float, expected: str) -> None:
    assert promql_duration(seconds) == expected


def test_window_promql_subtracts_proxied_and_keeps_services_without_proxied_traffic() -> None:
    promql = window_promql(PANIC)
    by = f"sum by ({contract.LABEL_NAMESPACE}, {contract.LABEL_SERVICE})"
    total = f"{by} (rate({contract.CONCURRENCY_SECONDS}[6000ms]))"
    proxied = f"{by} (rate({contract.PROXIED_CONCURRENCY_SECONDS}[6000ms]))"
    assert promql == f"clamp_min({total} - {proxied}, 0) or {total}"
    rps = window_promql(RPS)
    assert contract.REQUESTS in rps and contract.PROXIED_REQUESTS in rps
    assert rps.endswith(f"or 0 * {by} (rate({contract.CONCURRENCY_SECONDS}[6000ms]))")
    with pytest.raises(ValueError, match="unknown scaling metric"):
        window_promql(WindowQuery("memory", 60.0))


def _vector(*samples: tuple[dict[str, str], str]) -> dict[str, object]:
    result = [{"metric": labels, "value": [0, value]} for labels, value in samples]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_parse_vector_reads_service_labels_and_skips_nan_and_unlabelled() -> None:
    hello = {contract.LABEL_NAMESPACE: "default", contract.LABEL_SERVICE: "hello"}
    other = {contract.LABEL_NAMESPACE: "team-a", contract.LABEL_SERVICE: "other"}
    body = _vector((hello, "2.5"), (other, "NaN"), ({}, "7"))
    assert parse_vector(body) == {HELLO: 2.5}
    with pytest.raises(PrometheusQueryError, match="bad_data"):
        parse_vector({"status": "error", "error": "bad_data"})
    with pytest.raises(PrometheusQueryError, match="instant vector"):
        parse_vector({"status": "success", "data": {"resultType": "matrix", "result": []}})


@pytest.mark.parametrize(
    ("snapshot_values", "stale", "ready", "expected"),
    [
        ({HELLO: 3.0}, False, 2, 3.0),  # present: the value
        ({}, False, 2, None),  # absent with pods: no data, never zero
        ({}, False, 0, 0.0),  # absent, no pods, nothing held by the activator: truly idle
        ({HELLO: 1.5}, False, 0, 1.5),  # only the activator holds requests
        ({HELLO: 3.0}, True, 2, None),  # stale snapshot knows nothing
        ({}, True, 0, None),
    ],
)
def test_observed_value(snapshot_values: dict[ServiceKey, float], stale: bool, ready: int, expected: float | None) -> None:
    snapshot = MetricsSnapshot(at=0.0, values={PANIC: snapshot_values}, stale=stale)
    assert observed_value(snapshot, PANIC, HELLO, ready) == expected


SERIES = [
    # hello: two pods at 3 and 2 concurrent, 1.5 of which came through the activator, which also holds 4
    # (its 4 include the 1.5 it forwards): observed = 3 + 2 + 4 - 1.5 = 7.5; rps = 10 + 6 + 5 - 3 = 18.
    {"namespace": "default", "service": "hello", "pod": "a", "concurrency": 3.0, "proxied_concurrency": 1.5,
     "rps": 10.0, "proxied_rps": 3.0},
    {"namespace": "default", "service": "hello", "pod": "b", "concurrency": 2.0, "rps": 6.0},
    {"namespace": "default", "service": "hello", "pod": "activator-1", "component": contract.COMPONENT_ACTIVATOR,
     "concurrency": 4.0, "rps": 5.0},
    # other: one pod, no activator traffic at all (the proxied side of the query is absent).
    {"namespace": "team-a", "service": "other", "pod": "a", "concurrency": 0.5, "rps": 1.0},
    # at-zero: no pods, only the activator holding 2 requests.
    {"namespace": "default", "service": "at-zero", "pod": "activator-1", "component": contract.COMPONENT_ACTIVATOR,
     "concurrency": 2.0},
]


async def test_observe_against_real_prometheus(prometheus: PrometheusServer, exporter: ExporterControl) -> None:
    exporter.set(SERIES)
    # rate() over 6 s needs two scrapes of the new series; wait until the 6 s window holds only them.
    wait_until(lambda: len(query(prometheus.url, f"count_over_time({contract.CONCURRENCY_SECONDS}[7s]) >= 7")) == 5,
               20, "seven scrapes of every series")
    source = PrometheusMetrics(prometheus.url)
    try:
        snapshot = await source.observe([PANIC, RPS, PANIC], at=time.time())
        assert not snapshot.stale
        assert set(snapshot.values) == {PANIC, RPS}
        assert snapshot.values[PANIC][HELLO] == pytest.approx(7.5, rel=0.02)
        assert snapshot.values[PANIC][OTHER] == pytest.approx(0.5, rel=0.02)
        assert snapshot.values[PANIC][AT_ZERO] == pytest.approx(2.0, rel=0.02)
        assert snapshot.values[RPS][HELLO] == pytest.approx(18.0, rel=0.02)
        assert snapshot.values[RPS][OTHER] == pytest.approx(1.0, rel=0.02)
        assert snapshot.values[RPS][AT_ZERO] == 0.0  # activator holding, nothing answered yet
        assert snapshot.ready_pods == {HELLO: 2, OTHER: 1}
        assert source.ready_pods(HELLO) == 2
        assert source.ready_pods(AT_ZERO) == 0
        assert source.ready_pods(ServiceKey("default", "unknown")) == 0
    finally:
        await source.close()


async def test_unreachable_prometheus_is_stale_logged_once_and_recovers(
    prometheus: PrometheusServer, caplog: pytest.LogCaptureFixture
) -> None:
    source = PrometheusMetrics(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    caplog.set_level(logging.INFO, logger="scaler.prometheus_source")
    try:
        for _ in range(3):
            snapshot = await source.observe([PANIC], at=time.time())
            assert snapshot.stale and snapshot.values == {}
            assert source.ready_pods(HELLO) is None
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "prometheus unavailable" in warnings[0].getMessage()
        source.url = prometheus.url  # Prometheus is back (same object, next tick)
        snapshot = await source.observe([PANIC], at=time.time())
        assert not snapshot.stale
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        await source.close()
