"""The ScaledObject generator: bounds from Knative's keys, the external-push trigger, no HPA smoothing."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kapa.core import contract
from kapa.kube.scaledobject import UNBOUNDED_MAX_REPLICAS, horizontal_pod_autoscaler, scaled_object
from kapa.core.settings import AutoscalerConfig

SCALER = "kapa-scaler.kapa.svc:9095"


def deployment(annotations: dict[str, str] | None = None, uid: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "hello", "namespace": "shop", "annotations": annotations or {}}
    if uid:
        metadata["uid"] = uid
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata}


def min_scale(value: str) -> dict[str, str]:
    return {contract.knative_annotation("min-scale"): value}


def max_scale(value: str) -> dict[str, str]:
    return {contract.knative_annotation("max-scale"): value}


def test_trigger_points_at_the_scaler_for_this_service() -> None:
    manifest = scaled_object(deployment(), SCALER).manifest
    assert manifest["apiVersion"] == "keda.sh/v1alpha1" and manifest["kind"] == "ScaledObject"
    assert manifest["metadata"]["name"] == "hello" and manifest["metadata"]["namespace"] == "shop"
    spec = manifest["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hello"}
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "external-push"
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {"scalerAddress": SCALER, "namespace": "shop", "service": "hello"}
    assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA metadata is map<string,string>
    # KEDA waits Knative's grace period after IsActive turns false (default 30 s), not the scaler.
    assert spec["cooldownPeriod"] == 30


@pytest.mark.parametrize(
    ("annotations", "config", "expected_min", "expected_max", "warned"),
    [
        ({}, {}, 0, UNBOUNDED_MAX_REPLICAS, None),
        ({**min_scale("1"), **max_scale("3")}, {}, 1, 3, None),
        ({}, {"min-scale": "2", "max-scale": "8"}, 2, 8, None),
        (max_scale("5"), {"max-scale": "8"}, 0, 5, None),  # the annotation wins over the global value
        ({}, {"max-scale-limit": "50", "max-scale": "20"}, 0, 20, None),
        (max_scale("80"), {"max-scale-limit": "50", "max-scale": "20"}, 0, 50, "max-scale-limit 50"),
        ({}, {"enable-scale-to-zero": "false"}, 1, UNBOUNDED_MAX_REPLICAS, None),
        (min_scale("many"), {"min-scale": "2"}, 2, UNBOUNDED_MAX_REPLICAS, "autoscaling.knative.dev/min-scale"),
        (max_scale("-4"), {}, 0, UNBOUNDED_MAX_REPLICAS, "autoscaling.knative.dev/max-scale"),
        ({**min_scale("9"), **max_scale("4")}, {}, 0, 4, "9 exceeds max-scale 4"),
    ],
)
def test_replica_bounds_follow_min_and_max_scale(
    annotations: dict[str, str], config: dict[str, str], expected_min: int, expected_max: int, warned: str | None
) -> None:
    global_config, errors = AutoscalerConfig.from_mapping(config)
    assert errors == []
    result = scaled_object(deployment(annotations), SCALER, global_config)
    assert result.manifest["spec"]["minReplicaCount"] == expected_min
    assert result.manifest["spec"]["maxReplicaCount"] == expected_max
    if warned is None:
        assert result.warnings == ()
    else:
        assert any(warned in w and "shop/hello" in w for w in result.warnings), result.warnings


@pytest.mark.parametrize(
    ("annotations", "config", "cooldown_s"),
    [
        ({}, {"scale-to-zero-grace-period": "10s"}, 10),
        ({contract.knative_annotation("scale-to-zero-pod-retention-period"): "90s"}, {}, 90),
        ({contract.knative_annotation("scale-to-zero-pod-retention-period"): "5s"}, {}, 30),
        ({}, {"scale-to-zero-grace-period": "7.5s"}, 8),
    ],
)
def test_keda_waits_the_services_grace_period_before_zero(
    annotations: dict[str, str], config: dict[str, str], cooldown_s: int
) -> None:
    global_config, errors = AutoscalerConfig.from_mapping(config)
    assert errors == []
    assert scaled_object(deployment(annotations), SCALER, global_config).manifest["spec"]["cooldownPeriod"] == cooldown_s


def test_bounds_on_the_pod_template_win_as_the_scaler_reads_them() -> None:
    document = deployment({**min_scale("1"), **max_scale("9")})
    document["spec"] = {"template": {"metadata": {"annotations": max_scale("3")}}}
    spec = scaled_object(document, "kapa-scaler.kapa.svc:9095").manifest["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 3)


def test_only_problems_with_the_bounds_it_carries_are_reported() -> None:
    annotations = {**max_scale("3"), contract.knative_annotation("target"): "lots"}
    assert scaled_object(deployment(annotations), SCALER).warnings == ()


def allowed_change(rules: dict[str, Any], current: int) -> int:
    """How many replicas the HPA's policies let one sync add (or remove) from `current`, as the HPA computes
    its limits: per policy, Pods adds value and Percent adds ceil(current * value / 100); selectPolicy Max
    takes the largest."""
    limits = [
        p["value"] if p["type"] == "Pods" else math.ceil(current * p["value"] / 100) for p in rules["policies"]
    ]
    return max(limits)


@pytest.mark.parametrize("maximum", [3, 40, UNBOUNDED_MAX_REPLICAS])
def test_hpa_behavior_adds_no_smoothing(maximum: int) -> None:
    result = scaled_object(deployment(max_scale(str(maximum))), SCALER)
    spec = result.manifest["spec"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    for direction in ("scaleUp", "scaleDown"):
        rules = behavior[direction]
        assert rules["stabilizationWindowSeconds"] == 0
        assert rules["selectPolicy"] == "Max"
        assert all(p["periodSeconds"] == 1 for p in rules["policies"])
    # From the HPA's minimum (1) to the maximum in one step, and from the maximum down to 1 in one step.
    assert 1 + allowed_change(behavior["scaleUp"], 1) >= maximum
    assert maximum - allowed_change(behavior["scaleDown"], maximum) <= 1


def test_owned_by_the_deployment_when_its_uid_is_known() -> None:
    owned = scaled_object(deployment(uid="1234"), SCALER).manifest["metadata"]
    assert owned["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "hello", "uid": "1234"}]
    assert "ownerReferences" not in scaled_object(deployment(), SCALER).manifest["metadata"]


def test_deployment_without_name_is_refused() -> None:
    with pytest.raises(ValueError, match="metadata.name"):
        scaled_object({"metadata": {}}, SCALER)


@pytest.mark.parametrize(
    ("annotations", "trigger"),
    [
        ({"metric": "cpu", "target": "60"},
         {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "60"}}),
        ({}, {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "80"}}),
        ({"metric": "memory", "target": "256"},
         {"type": "memory", "metricType": "AverageValue", "metadata": {"value": "256Mi"}}),
    ],
)
def test_hpa_class_gets_the_resource_trigger_and_never_zero(annotations: dict[str, str], trigger: dict[str, Any]) -> None:
    named = {contract.knative_annotation("class"): contract.CLASS_HPA, **max_scale("6"),
             **{contract.knative_annotation(key): value for key, value in annotations.items()}}
    spec = scaled_object(deployment(named), "kapa-scaler.kapa.svc:9095").manifest["spec"]
    assert spec["triggers"] == [trigger]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
    assert "advanced" not in spec, "the HPA's own smoothing suits resource metrics"


def test_direct_actuator_gets_a_plain_hpa_for_the_hpa_class_only() -> None:
    assert horizontal_pod_autoscaler(deployment(max_scale("6"))) is None, "the KPA class is the scaler's"
    cpu = horizontal_pod_autoscaler(deployment({contract.knative_annotation("class"): contract.CLASS_HPA,
                                                contract.knative_annotation("target"): "60"}, uid="u1"))
    assert cpu is not None
    assert cpu["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert cpu["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]
    assert (cpu["spec"]["minReplicas"], cpu["spec"]["maxReplicas"]) == (1, UNBOUNDED_MAX_REPLICAS)
    memory = horizontal_pod_autoscaler(deployment({contract.knative_annotation("class"): contract.CLASS_HPA,
                                                   contract.knative_annotation("metric"): "memory",
                                                   contract.knative_annotation("target"): "256"}))
    assert memory is not None and memory["spec"]["metrics"][0]["resource"]["target"] == {
        "type": "AverageValue", "averageValue": "256Mi"}
