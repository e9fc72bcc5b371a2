"""One way to read each setting: the scaler, the activator, the gateway, the injected sidecar and local mode
read `kapa.dev/timeout-seconds` and `kapa.dev/container-concurrency` alike (kapa.core.settings), for values
the parts once disagreed on (700, nan, inf, 2.5, 2000)."""

from __future__ import annotations

import pytest

from activator.config import settings_from_entry
from gateway.routing import timeout_from_annotations
from kapa.core import contract
from kapa.core.services import ServiceEntry, ServiceKey, ServiceSpec
from kapa.core.settings import AutoscalerConfig, service_config, sidecar_settings
from kapa.kube.inject import QUEUE_PROXY_CONTAINER, inject_document

KEY = ServiceKey("shop", "cart")
TIMEOUT, CONCURRENCY = contract.ANNOTATION_TIMEOUT_SECONDS, contract.ANNOTATION_CONTAINER_CONCURRENCY


def injected_env(annotations: dict[str, str]) -> dict[str, str]:
    pod = {"kind": "Pod", "metadata": {"name": "cart", "namespace": "shop", "annotations": annotations,
                                       "labels": {contract.ANNOTATION_ENABLED: "true"}},
           "spec": {"containers": [{"name": "app", "image": "x"}]}}
    (sidecar,) = [c for c in inject_document(pod).document["spec"]["containers"] if c["name"] == QUEUE_PROXY_CONTAINER]
    return {variable["name"]: variable.get("value") for variable in sidecar["env"]}


@pytest.mark.parametrize(("raw", "timeout_s"), [
    ("30", 30.0), ("2.5", 2.5), ("600", 600.0),
    ("700", 300.0), ("nan", 300.0), ("inf", 300.0), ("0", 300.0), ("-1", 300.0), ("soon", 300.0),
])
def test_every_part_reads_the_timeout_alike(raw: str, timeout_s: float) -> None:
    spec = ServiceSpec(KEY, {TIMEOUT: raw})
    assert sidecar_settings(spec)[0].timeout_s == timeout_s
    assert service_config(AutoscalerConfig.default(), spec)[0].timeout_s == timeout_s  # scaler
    assert settings_from_entry(ServiceEntry(spec)).timeout_s == timeout_s  # activator
    assert timeout_from_annotations(spec) == timeout_s  # gateway
    assert float(injected_env({TIMEOUT: raw})[contract.ENV_REVISION_TIMEOUT_SECONDS]) == timeout_s  # sidecar
    rejected = [error.key for error in sidecar_settings(spec)[1]]
    assert rejected == ([] if raw in ("30", "2.5", "600") else [TIMEOUT])


@pytest.mark.parametrize(("raw", "concurrency"), [
    ("0", 0), ("10", 10), ("1000", 1000), ("2000", 0), ("2.5", 0), ("-3", 0), ("many", 0),
])
def test_every_part_reads_container_concurrency_alike(raw: str, concurrency: int) -> None:
    spec = ServiceSpec(KEY, {CONCURRENCY: raw})
    assert sidecar_settings(spec)[0].container_concurrency == concurrency
    assert service_config(AutoscalerConfig.default(), spec)[0].container_concurrency == concurrency
    assert settings_from_entry(ServiceEntry(spec)).container_concurrency == concurrency
    assert int(injected_env({CONCURRENCY: raw})[contract.ENV_CONTAINER_CONCURRENCY]) == concurrency
