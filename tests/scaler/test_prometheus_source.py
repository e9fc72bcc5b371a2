"""The Prometheus query layer: PromQL shape (pure) and answers from a real Prometheus with known rates."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest

from kapa.core import contract
from kapa.local.prometheus import PrometheusServer
from kapa.core.services import ServiceKey
from kapa.core.settings import AGGREGATION_WEIGHTED_EXPONENTIAL
from scaler.observations import MetricsSnapshot, WindowQuery, observed_value
from scaler.policy import LoadHistory
from scaler.prometheus_source import (
    HISTORY_STEP_S,
    PrometheusMetrics,
    PrometheusQueryError,
    bucket_promql,
    history_promql,
    parse_matrix,
    parse_vector,
    promql_duration,
    window_promql,
)
from tests.scaler.conftest import ExporterControl, query, wait_until
from tests.support import free_port

HELLO = ServiceKey("default", "hello")
OTHER = ServiceKey("team-a", "other")
AT_ZERO = ServiceKey("default", "at-zero")
NEVER_SEEN = ServiceKey("default", "never-seen")
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


def test_history_promql_counts_every_components_requests_in_flight_per_step() -> None:
    by = f"sum by ({contract.LABEL_NAMESPACE}, {contract.LABEL_SERVICE})"
    assert history_promql() == f"{by} (rate({contract.CONCURRENCY_SECONDS}[3000ms]))"  # 2 s steps, 3 s for rate()


def test_parse_matrix_reads_values_by_step_number() -> None:
    hello = {contract.LABEL_NAMESPACE: "default", contract.LABEL_SERVICE: "hello"}
    body = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": hello, "values": [[1000.0, "1.5"], [1002.0, "NaN"], [1004.0, "0"]]},
        {"metric": {}, "values": [[1000.0, "9"]]},
    ]}}
    assert parse_matrix(body, 2.0) == {HELLO: {500: 1.5, 502: 0.0}}
    with pytest.raises(PrometheusQueryError, match="range vector"):
        parse_matrix({"status": "success", "data": {"resultType": "vector", "result": []}}, 2.0)


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


async def test_load_histories_from_real_prometheus_and_the_same_after_a_restart(
    prometheus: PrometheusServer, exporter: ExporterControl
) -> None:
    """Load for a while, then none: the history shows the load, then the silence, one value per 2 s step; a
    service without series is silent throughout; fetching step by step (a running scaler) and all at once
    (a scaler started now) give the same history."""
    loaded = {"namespace": "default", "service": "hello", "pod": "a"}
    exporter.set([{**loaded, "concurrency": 2.0}])
    await asyncio.sleep(8)
    exporter.set([{**loaded, "concurrency": 0.0}])
    loaded_until = time.time()
    await asyncio.sleep(14)
    running = PrometheusMetrics(prometheus.url)
    restarted = PrometheusMetrics(prometheus.url)
    try:
        at = math.floor(time.time() / HISTORY_STEP_S) * HISTORY_STEP_S - HISTORY_STEP_S
        earlier = await running.load_histories([HELLO], at - 2 * HISTORY_STEP_S)
        histories = await running.load_histories([HELLO, NEVER_SEEN], at)  # fetches only the two new steps
        assert earlier[HELLO].values[2:] == histories[HELLO].values[:-2]
        assert histories == await restarted.load_histories([HELLO, NEVER_SEEN], at)
        hello = histories[HELLO]
        assert hello.step_s == HISTORY_STEP_S and len(hello.values) == 1800  # the last hour, one value per tick
        assert set(histories[NEVER_SEEN].values) == {0.0}
        silent_steps = math.floor((at - loaded_until) / HISTORY_STEP_S) - 2  # the 3 s rate() window still sees load
        assert silent_steps >= 3
        assert hello.values[-silent_steps:] == (0.0,) * silent_steps
        # A step whose 3 s window lies within the 8 s of load reads its 2 requests in flight.
        loaded_step = math.floor(loaded_until / HISTORY_STEP_S) * HISTORY_STEP_S - HISTORY_STEP_S
        assert hello.values[-1 - round((at - loaded_step) / HISTORY_STEP_S)] == pytest.approx(2.0, rel=0.05)
    finally:
        await running.close()
        await restarted.close()


async def test_an_unreachable_prometheus_gives_no_history_and_the_gap_is_fetched_later(
    prometheus: PrometheusServer,
) -> None:
    source = PrometheusMetrics(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    try:
        at = math.floor(time.time() / HISTORY_STEP_S) * HISTORY_STEP_S - 2.0
        assert await source.load_histories([HELLO], at - 10.0) == {}
        source.url = prometheus.url
        histories = await source.load_histories([HELLO], at)
        reference = PrometheusMetrics(prometheus.url)
        try:
            assert histories == await reference.load_histories([HELLO], at)
        finally:
            await reference.close()
        assert isinstance(histories[HELLO], LoadHistory)
    finally:
        await source.close()


def test_bucket_promql_is_the_last_second_of_each_counter() -> None:
    promql = bucket_promql(contract.METRIC_CONCURRENCY)
    assert f"irate({contract.CONCURRENCY_SECONDS}[3000ms])" in promql
    assert f"irate({contract.PROXIED_CONCURRENCY_SECONDS}[3000ms])" in promql and "rate(" not in promql.replace("irate(", "")


async def test_weighted_exponential_follows_a_step_as_knative_weighs_its_buckets(
    prometheus: PrometheusServer, exporter: ExporterControl
) -> None:
    """`metric-aggregation-algorithm: weightedExponential` live: one concurrency over a 10 s window, 1 until
    4 s ago and 9 since. Knative's weights over 10 buckets put about 94 % on the last three seconds, so the
    weighted average reads close to 9 while the linear one reads about 4.2 (6 s of 1, 4 s of 9)."""
    series = {"namespace": "default", "service": "hello", "pod": "a", "component": contract.COMPONENT_QUEUE_PROXY}
    exporter.set([{**series, "concurrency": 1.0}])
    await asyncio.sleep(12)
    exporter.set([{**series, "concurrency": 9.0}])
    await asyncio.sleep(4)
    linear = WindowQuery(contract.METRIC_CONCURRENCY, 10.0)
    weighted = WindowQuery(contract.METRIC_CONCURRENCY, 10.0, AGGREGATION_WEIGHTED_EXPONENTIAL)
    source = PrometheusMetrics(prometheus.url)
    try:
        snapshot = await source.observe([linear, weighted], at=time.time())
    finally:
        await source.close()
    assert 3.0 < snapshot.values[linear][HELLO] < 5.5, snapshot.values
    assert 7.5 < snapshot.values[weighted][HELLO] <= 9.0 + 1e-6, snapshot.values
