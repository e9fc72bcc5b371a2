"""The Scaler loop in-process over a real Prometheus: decisions, pokes, subscriptions, errors, outages."""

from __future__ import annotations

import asyncio
import math
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from kapa.core import contract
from kapa.local.prometheus import PrometheusServer, ScrapeTarget
from kapa.core.services import ServiceKey, ServiceSpec
from scaler.catalog import FileCatalog, StaticCatalog
from kapa.core.settings import AutoscalerConfig
from scaler.decision import TICK_INTERVAL_S, Decision
from scaler.loop import Scaler, UnknownService
from scaler.prometheus_source import PrometheusMetrics
from tests.scaler.conftest import ExporterControl, query, series, wait_until
from tests.support import free_port

HELLO = ServiceKey("default", "hello")
IDLE = ServiceKey("default", "idle")
SLEEPY = ServiceKey("default", "sleepy")
CPU_BOUND = ServiceKey("default", "crunch")
BROKEN = ServiceKey("default", "broken")


def annotations(**values: str) -> dict[str, str]:
    return {contract.knative_annotation(key.replace("_", "-")): value for key, value in values.items()}


#: Short windows so the test sees a full stable window quickly: stable 6 s, panic 3 s; target 1 per pod.
FAST = annotations(window="6s", panic_window_percentage="50", target="1", target_utilization_percentage="100")
CONFIG, _ = AutoscalerConfig.from_mapping({"allow-zero-initial-scale": "true"})


class RecordingActuator:
    """An Actuator that remembers what it was asked to apply (the test's view of the local backend)."""

    def __init__(self) -> None:
        self.applied: list[dict[ServiceKey, Decision]] = []

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        self.applied.append(dict(decisions))


def wait_for_full_windows(prometheus: PrometheusServer, pods: set[str]) -> None:
    """Wait until the last 8 s of data hold exactly these pods' series, each scraped 8 times."""

    def settled() -> bool:
        counts = query(prometheus.url, f"count_over_time({contract.CONCURRENCY_SECONDS}[8s])")
        return {c["metric"]["pod"] for c in counts} == pods and all(float(c["value"][1]) >= 8 for c in counts)

    wait_until(settled, 25, f"eight scrapes of exactly the series of {sorted(pods)}")


async def test_tick_poke_subscribe_and_config_errors(
    prometheus: PrometheusServer, exporter: ExporterControl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    exporter.set(
        [
            {"namespace": "default", "service": "hello", "pod": "tick-a", "concurrency": 2.5},
            {"namespace": "default", "service": "hello", "pod": "tick-b", "concurrency": 2.0},
        ]
    )
    catalog = StaticCatalog(
        [
            ServiceSpec(HELLO, FAST),
            ServiceSpec(IDLE, FAST),
            ServiceSpec(SLEEPY, {**FAST, contract.knative_annotation("initial-scale"): "0"}),
            ServiceSpec(BROKEN, {**FAST, contract.knative_annotation("target"): "lots"}),
            ServiceSpec(CPU_BOUND, {contract.knative_annotation("class"): contract.CLASS_HPA}),
        ]
    )
    source = PrometheusMetrics(prometheus.url)
    actuator = RecordingActuator()
    scaler = Scaler(CONFIG, catalog, source, ready_pods=source, actuators=[actuator])
    assert scaler.latest(HELLO) is None
    wait_for_full_windows(prometheus, {"tick-a", "tick-b"})
    try:
        with scaler.subscribe() as every_change:
            decisions = await scaler.tick(time.time())
            changes = {change.key: change for change in await every_change.next()}
        assert set(changes) == {HELLO, IDLE, SLEEPY, BROKEN, CPU_BOUND}  # first decisions are changes
        # The HPA class: nothing decided nor queried, only routed and explained.
        delegated = decisions[CPU_BOUND]
        assert delegated.delegated and delegated.mode == contract.MODE_PROXY, "no pod ready: the activator"
        assert "Kubernetes HPA" in delegated.explanation[0] and "cpu, target 80%" in delegated.explanation[0]
        assert all(query.metric == contract.METRIC_CONCURRENCY for query in scaler.windows())
        hello = decisions[HELLO]
        assert hello.stable_value == pytest.approx(4.5, rel=0.05)
        assert hello.ready_pods == 2 and not hello.stale
        assert hello.desired_pods == 5  # ceil(4.5 / 1)
        assert actuator.applied == [decisions]
        # No pods and no series anywhere: truly idle (not "no data"); initial-scale keeps 1 / allows 0.
        assert decisions[IDLE].stable_value == 0.0 and decisions[IDLE].desired_pods == 1
        assert decisions[SLEEPY].desired_pods == 0 and decisions[SLEEPY].mode == contract.MODE_PROXY
        # The bad annotation: logged naming key and service, the default used (target 100 x 100 %).
        assert scaler.service_config(BROKEN).target == pytest.approx(100.0)
        assert decisions[BROKEN].desired_pods == 1

        # A poke decides at once for that service, applies it, and reaches its subscribers as a poke.
        with scaler.subscribe([SLEEPY]) as sleepy_changes:
            poked = await scaler.poke(SLEEPY)
            assert poked is not None and poked.desired_pods == 1
            (change,) = await asyncio.wait_for(sleepy_changes.next(), 1)
        assert change.poked and change.key == SLEEPY and change.decision.desired_pods == 1
        assert actuator.applied[-1] == {SLEEPY: poked}
        assert scaler.history(SLEEPY)[-1].poked
        with pytest.raises(UnknownService):
            await scaler.poke(ServiceKey("default", "nobody"))

        await scaler.tick(time.time())
        bad_lines = [r for r in caplog.records if "invalid autoscaling setting" in r.getMessage()]
        assert len(bad_lines) == 1  # once per service, not per tick
        fields = bad_lines[0].kapa_fields  # type: ignore[attr-defined]
        assert fields["service"] == str(BROKEN) and fields["key"] == contract.knative_annotation("target")

        exposition = scaler.telemetry.exposition().decode()
        assert f"{series(contract.SCALER_DESIRED_PODS, HELLO)} 5.0" in exposition
        assert f"{series(contract.SCALER_POKES, SLEEPY)} 1.0" in exposition
        assert f"{contract.SCALER_METRICS_SOURCE_STALE} 0.0" in exposition
        assert f"{contract.SCALER_TICK_DURATION}_count 2.0" in exposition
    finally:
        await source.close()


async def test_same_prometheus_data_gives_same_decisions_in_two_scalers(
    prometheus: PrometheusServer, exporter: ExporterControl
) -> None:
    exporter.set([{"namespace": "default", "service": "hello", "pod": "same-a", "concurrency": 6.5}])
    wait_for_full_windows(prometheus, {"same-a"})
    sources = [PrometheusMetrics(prometheus.url) for _ in range(2)]
    scalers = [Scaler(CONFIG, StaticCatalog([ServiceSpec(HELLO, FAST)]), s, ready_pods=s) for s in sources]
    try:
        at = float(int(time.time()) // 2 * 2)
        first, second = [await scaler.tick(at) for scaler in scalers]
        assert first[HELLO] == second[HELLO]
        assert first[HELLO].desired_pods == 7
    finally:
        for source in sources:
            await source.close()


async def test_prometheus_outage_holds_decision_then_recovers(exporter: ExporterControl, tmp_path: Path) -> None:
    exporter.set([{"namespace": "default", "service": "hello", "pod": "outage-a", "concurrency": 2.5}])
    prometheus = PrometheusServer(workdir=tmp_path / "prometheus", targets=[ScrapeTarget(exporter.address)])
    await prometheus.start()
    source = PrometheusMetrics(prometheus.url, timeout_s=0.5)
    scaler = Scaler(CONFIG, StaticCatalog([ServiceSpec(HELLO, FAST)]), source, ready_pods=source)
    try:
        wait_for_full_windows(prometheus, {"outage-a"})
        decision = (await scaler.tick(time.time()))[HELLO]
        assert decision.desired_pods == 3 and not decision.stale

        await prometheus.stop()
        for _ in range(3):  # several ticks without Prometheus: held, never scaled to zero
            held = (await scaler.tick(time.time()))[HELLO]
            assert held.stale and held.desired_pods == 3 and held.ready_pods == 1
        assert scaler.metrics_stale()
        exposition = scaler.telemetry.exposition().decode()
        assert f"{contract.SCALER_METRICS_SOURCE_STALE} 1.0" in exposition
        assert f"{series(contract.SCALER_STALE, HELLO)} 1.0" in exposition

        await prometheus.start()
        deadline = time.monotonic() + 20
        while True:
            recovered = (await scaler.tick(time.time()))[HELLO]
            if not recovered.stale:
                break
            assert time.monotonic() < deadline, "the scaler did not recover after Prometheus came back"
            await asyncio.sleep(0.5)
        assert not scaler.metrics_stale() and recovered.desired_pods >= 1
    finally:
        await source.close()
        await prometheus.close()


class DeploymentsAtScale(StaticCatalog):
    """A catalog that also knows each workload's replica setting, as the Kubernetes catalog does."""

    def __init__(self, specs: list[ServiceSpec], replicas: Mapping[ServiceKey, int]) -> None:
        super().__init__(specs)
        self._replicas = dict(replicas)

    def replicas(self, key: ServiceKey) -> int | None:
        return self._replicas.get(key)


async def test_a_restarted_scaler_leaves_a_service_at_zero_at_zero(prometheus: PrometheusServer) -> None:
    """Neither service has pods or series; the catalog says one was scaled to zero (it ran before), the other
    is a new workload at one replica. Only the new one gets initial-scale."""
    scaled_down, new = ServiceKey("default", "scaled-down"), ServiceKey("default", "new")
    specs = [ServiceSpec(scaled_down, FAST), ServiceSpec(new, FAST)]
    source = PrometheusMetrics(prometheus.url)
    try:
        at = time.time()
        restarted = Scaler(AutoscalerConfig.default(), DeploymentsAtScale(specs, {scaled_down: 0, new: 1}), source,
                           ready_pods=source)  # fmt: skip
        decisions = await restarted.tick(at)
        assert (decisions[scaled_down].desired_pods, decisions[new].desired_pods) == (0, 1)
        assert any(note.startswith("existed before this scaler started") for note in decisions[scaled_down].explanation)
        # Without the catalog's record nothing tells the two apart: both are new.
        unaware = Scaler(AutoscalerConfig.default(), StaticCatalog(specs), source, ready_pods=source)
        assert {d.desired_pods for d in (await unaware.tick(at)).values()} == {1}
    finally:
        await source.close()


async def test_first_decision_waits_until_ready_pods_are_known() -> None:
    """Prometheus unreachable from the start: the ready pods are unknown, and reading them as zero would give
    running services initial-scale (a restart scaling them down). No tick decides; a poke still wakes."""
    source = PrometheusMetrics(f"http://127.0.0.1:{free_port()}", timeout_s=0.3)
    actuator = RecordingActuator()
    scaler = Scaler(CONFIG, StaticCatalog([ServiceSpec(HELLO, FAST), ServiceSpec(SLEEPY, FAST)]), source,
                    ready_pods=source, actuators=[actuator])  # fmt: skip
    try:
        assert await scaler.tick(time.time()) == {}
        assert scaler.latest(HELLO) is None and actuator.applied == []
        poked = await scaler.poke(SLEEPY)
        assert poked is not None and poked.desired_pods == 1 and poked.stale
        assert actuator.applied == [{SLEEPY: poked}]
    finally:
        await source.close()


def test_file_catalog_follows_the_file_and_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("services:\n  - name: hello\n")
    catalog = FileCatalog(path)
    assert list(catalog.services()) == [HELLO]
    path.write_text("services:\n  - name: hello\n  - name: other\n    namespace: team-a\n")
    assert set(catalog.services()) == {HELLO, ServiceKey("team-a", "other")}
    path.write_text("services: [\n")  # a half-saved edit
    assert set(catalog.services()) == {HELLO, ServiceKey("team-a", "other")}


async def test_running_loop_ticks_on_wall_clock_multiples(prometheus: PrometheusServer) -> None:
    source = PrometheusMetrics(prometheus.url)
    scaler = Scaler(CONFIG, StaticCatalog([ServiceSpec(HELLO, FAST)]), source, ready_pods=source)
    try:
        scaler.start()
        await asyncio.sleep(2.5)  # the first tick at once, the next on the following 2 s boundary
    finally:
        await scaler.stop()
        await source.close()
    times = [record.at for record in scaler.history(HELLO)]
    assert len(times) >= 2
    assert all(at % TICK_INTERVAL_S == 0 for at in times), times
    assert [b - a for a, b in zip(times, times[1:])] == [TICK_INTERVAL_S] * (len(times) - 1)


class FlakyActuator:
    """An Actuator that fails until told otherwise (a Kubernetes API that is down for a while)."""

    def __init__(self) -> None:
        self.failing = True
        self.applied = 0

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        if self.failing:
            raise ConnectionError("API server unreachable")
        self.applied += 1


async def test_failing_actuator_is_logged_once_and_others_still_apply(
    prometheus: PrometheusServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scaler.loop")
    flaky, recording = FlakyActuator(), RecordingActuator()
    source = PrometheusMetrics(prometheus.url)
    scaler = Scaler(CONFIG, StaticCatalog([ServiceSpec(HELLO, FAST)]), source, ready_pods=source,
                    actuators=[flaky, recording])  # fmt: skip
    try:
        for _ in range(3):
            await scaler.tick(time.time())
        flaky.failing = False
        await scaler.tick(time.time())
    finally:
        await source.close()
    assert len(recording.applied) == 4 and flaky.applied == 1
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("actuator failed; retrying every tick") == 1
    assert messages.count("actuator works again") == 1


class _StartingCatalog(StaticCatalog):
    """The local mode's catalog as `kapa up` starts: each workload's replica setting is 0 until its first
    replica is up (ReplicaRecord)."""

    def replicas(self, key: ServiceKey) -> int | None:
        return 0


class _PlusFresh:
    """Prometheus's ready-pod counts, plus one ready pod of a service Prometheus has not scraped yet (a
    replica the local mode just started)."""

    def __init__(self, source: PrometheusMetrics, fresh: ServiceKey) -> None:
        self.source, self.fresh = source, fresh

    def ready_pods(self, key: ServiceKey) -> int | None:
        return 1 if key == self.fresh else self.source.ready_pods(key)


async def test_catching_up_replays_a_service_only_from_when_prometheus_knows_it(
    prometheus: PrometheusServer, exporter: ExporterControl
) -> None:
    """Before its first series, Prometheus's silence about a service is no evidence of idleness: replayed as
    zero, a service just started would begin its grace period (or go to zero) at its first live tick."""
    exporter.set([{"namespace": "default", "service": "hello", "pod": "catch-a", "concurrency": 3.0}])
    fresh = ServiceKey("default", "fresh")
    source = PrometheusMetrics(prometheus.url)
    scaler = Scaler(CONFIG, _StartingCatalog([ServiceSpec(HELLO, FAST), ServiceSpec(fresh, FAST)]), source,
                    ready_pods=_PlusFresh(source, fresh))
    wait_for_full_windows(prometheus, {"catch-a"})
    try:
        now = math.floor(time.time() / TICK_INTERVAL_S) * TICK_INTERVAL_S
        assert await scaler.catch_up(now) > 0
        decisions = await scaler.tick(now)
    finally:
        await source.close()
    assert decisions[HELLO].desired_pods >= 3 and decisions[HELLO].active  # 3 in flight, target 1
    assert decisions[fresh].desired_pods == 1 and decisions[fresh].active, decisions[fresh].explanation
