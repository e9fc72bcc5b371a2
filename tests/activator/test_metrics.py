"""The activator's exposition: per-service families built at scrape from plain counters."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from kapa.core import contract
from kapa.core.services import ServiceKey

from activator.config import ServiceSettings
from activator.metrics import ActivatorCollector
from activator.service import Service

HELLO = ServiceKey("default", "hello")


def exposition(service: Service, scaling_only: bool) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ActivatorCollector(lambda: [service], {HELLO: 2}, scaling_only))
    return generate_latest(registry).decode()


def test_counts_and_histogram() -> None:
    service = Service.from_settings(ServiceSettings(HELLO, ()))
    for status in (200, 200, 204, 404, 502, 504):
        service.stats.count_response(status)
    service.stats.count_rejected(contract.REASON_TIMEOUT)
    for wait_s in (0.004, 0.5, 0.5, 1000.0):
        service.stats.observe_cold_start(wait_s)
    text = exposition(service, scaling_only=False)
    labels = 'kapa_component="activator",kapa_namespace="default",kapa_service="hello"'
    for line in (
        f'{contract.REQUESTS}{{code_class="2xx",{labels}}} 3.0',
        f'{contract.REQUESTS}{{code_class="4xx",{labels}}} 1.0',
        f'{contract.REQUESTS}{{code_class="5xx",{labels}}} 2.0',
        f'{contract.REJECTED_REQUESTS}{{{labels},reason="timeout"}} 1.0',
        f'{contract.ACTIVATOR_POKES}{{{labels}}} 2.0',
        f'{contract.ACTIVATOR_HELD_REQUESTS}{{{labels}}} 0.0',
        f'{contract.ACTIVATOR_COLD_START_WAIT}_bucket{{{labels},le="0.005"}} 1.0',
        f'{contract.ACTIVATOR_COLD_START_WAIT}_bucket{{{labels},le="0.5"}} 3.0',
        f'{contract.ACTIVATOR_COLD_START_WAIT}_bucket{{{labels},le="300.0"}} 3.0',
        f'{contract.ACTIVATOR_COLD_START_WAIT}_bucket{{{labels},le="+Inf"}} 4.0',
        f'{contract.ACTIVATOR_COLD_START_WAIT}_count{{{labels}}} 4.0',
    ):
        assert line in text.replace(", ", ","), line
    assert f"{contract.CONCURRENCY_SECONDS}{{" in text


def test_scaling_subset_has_only_what_the_scaler_reads() -> None:
    service = Service.from_settings(ServiceSettings(HELLO, ()))
    service.stats.count_response(200)
    names = {line.split("{")[0].split(" ")[0] for line in exposition(service, True).splitlines() if not line.startswith("#")}
    assert names == {contract.CONCURRENCY_SECONDS, contract.REQUESTS}
