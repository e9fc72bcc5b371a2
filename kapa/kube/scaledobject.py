"""The KEDA ScaledObject Kapa creates for an enrolled Deployment when the chart's actuator is `keda`.

KEDA owns the 0 <-> 1 step (through the external-push trigger's StreamIsActive, which the scaler answers the
moment the activator pokes it) and the HPA it creates owns 1 <-> N, fed by the scaler's GetMetrics. The
scaler has already applied every Knative rule (windows, panic, rate limits, scale-down delay, grace
period), so everything downstream must pass its number through untouched:

- the HPA's behavior has no stabilisation window and policies that allow any change in one 1 s period
  (the HPA default would hold scale-down for 300 s and limit scale-up to 100 % or 4 pods per 15 s);
- IsActive is Knative's "Active": false from the start of the grace period (one pod lingering, the
  activator in the path), and cooldownPeriod is that grace period (max of scale-to-zero-grace-period and
  scale-to-zero-pod-retention-period), so KEDA goes 1 -> 0 when Knative would. The grace is waited by KEDA
  and not by the scaler because KEDA v2.21 can take a scaler it cannot reach for an idle one (a scalers
  cache closed under a reader reads as "inactive, no error"): with cooldown 0 a loaded service went to 0
  while its scaler restarted; now that takes a scaler silent for the whole grace period;
- pollingInterval is short, because KEDA notices deactivation (N -> 0) only when it polls IsActive.

A service of Knative's HPA class (`autoscaling.knative.dev/class: hpa.autoscaling.knative.dev`, metric cpu
or memory) gets KEDA's resource trigger instead: the HPA scales it on its pods' use, with its own smoothing.

min/max replicas come from Knative's min-scale and max-scale (annotation on the Deployment, else the global
config-autoscaler value, within max-scale-limit). The function is pure; the scaler applies its result with
the Kubernetes API.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kapa.core import contract
from kapa.kube.deployments import deployment_spec
from kapa.core.settings import AutoscalerConfig, ServiceConfig, service_config

#: KEDA's API group/version and the trigger type whose StreamIsActive lets the scaler wake a service at once.
KEDA_API_VERSION: str = "keda.sh/v1alpha1"
TRIGGER_TYPE: str = "external-push"
#: Knative's max-scale 0 means "no limit"; an HPA needs a number. (With max-scale-limit set, max-scale is never 0.)
UNBOUNDED_MAX_REPLICAS: int = 1000
#: Seconds between KEDA's IsActive polls (the scaler ticks every 2 s, so polling faster would find nothing new).
DEFAULT_POLLING_INTERVAL_S: int = 2
#: The annotations this manifest carries the values of (their problems are reported with it).
_BOUND_ANNOTATIONS = (contract.knative_annotation("min-scale"), contract.knative_annotation("max-scale"))
#: Labels marking objects Kapa manages, so it finds (and only touches) its own.
MANAGED_BY_LABELS: dict[str, str] = {"app.kubernetes.io/managed-by": "kapa"}


@dataclass(frozen=True)
class ScaledObjectResult:
    """The manifest and the warnings (one per malformed annotation or config value, naming the key)."""

    manifest: dict[str, Any]
    warnings: tuple[str, ...] = ()


def no_smoothing_behavior(max_replicas: int) -> dict[str, Any]:
    """HPA behavior that applies the metric's answer at once in both directions.

    Scale-up: one Pods policy as large as max_replicas allows a jump from 1 to the maximum in one period;
    scale-down: 100 % allows a drop to the minimum in one period. Both periods are 1 s, shorter than any HPA
    sync, so no earlier change ever counts against the next one. Tolerance 0: the metric already is the
    exact pod count, and the HPA's default 10 % would hold a ±1 step at 10 or more pods (11/10 is within
    it). The field is the HPAConfigurableTolerance feature (beta and on by default from Kubernetes 1.35);
    KEDA passes it through, and an API server without it drops the unknown field."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "tolerance": "0",
            "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": max_replicas, "periodSeconds": 1}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 0,
            "tolerance": "0",
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
        },
    }


def scaled_object(
    deployment: Mapping[str, Any],
    scaler_address: str,
    config: AutoscalerConfig | None = None,
    polling_interval_s: int = DEFAULT_POLLING_INTERVAL_S,
) -> ScaledObjectResult:
    """The ScaledObject for one enrolled Deployment (a dict as the Kubernetes API returns it).

    scaler_address is the scaler's gRPC Service as HOST:PORT; config is the global config-autoscaler
    (Knative's defaults when None). min-scale and max-scale are read by the scaler's own parser
    (kapa.core.settings.service_config), so KEDA's bounds are the decision's bounds. With the Deployment's uid
    present, the ScaledObject is owned by it, so deleting the Deployment deletes the ScaledObject too."""
    metadata = deployment.get("metadata") or {}
    name, namespace = str(metadata.get("name", "")), str(metadata.get("namespace") or "default")
    if not name:
        raise ValueError("the Deployment has no metadata.name")
    # The annotations the scaler reads: the Deployment's and its pod template's (those win), as the catalog merges them.
    spec = deployment_spec({**deployment, "metadata": {**metadata, "name": name, "namespace": namespace}})
    settings, errors = service_config(config or AutoscalerConfig.default(), spec)
    warnings = tuple(str(e) for e in errors if e.key in _BOUND_ANNOTATIONS)
    max_replicas = settings.max_scale or UNBOUNDED_MAX_REPLICAS
    # KEDA activates 0 -> 1 itself; without scale to zero the floor is one pod, as in Knative.
    min_replicas = settings.min_scale if settings.enable_scale_to_zero else max(1, settings.min_scale)

    target_ref = _target_ref(name)
    if settings.autoscaler_class == contract.CLASS_HPA:
        # The HPA class: KEDA's resource trigger, the HPA's own smoothing; an HPA never goes to zero.
        spec: dict[str, Any] = {
            "scaleTargetRef": target_ref,
            "minReplicaCount": _hpa_min_replicas(settings, max_replicas),
            "maxReplicaCount": max_replicas,
            "triggers": [resource_trigger(settings.metric, settings.total_target)],
        }
    else:
        spec = {
            "scaleTargetRef": target_ref,
            "minReplicaCount": min(min_replicas, max_replicas),
            "maxReplicaCount": max_replicas,
            "pollingInterval": polling_interval_s,
            "cooldownPeriod": math.ceil(
                max(settings.scale_to_zero_grace_period_s, settings.scale_to_zero_pod_retention_period_s)),
            "triggers": [
                {
                    "type": TRIGGER_TYPE,
                    # The scaler answers with desired replicas against an average target of 1 (see issue 3).
                    "metricType": "AverageValue",
                    "metadata": {"scalerAddress": scaler_address, "namespace": namespace, "service": name},
                }
            ],
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": no_smoothing_behavior(max_replicas)}},
        }
    manifest = {
        "apiVersion": KEDA_API_VERSION, "kind": "ScaledObject", "metadata": _owned_metadata(metadata, namespace),
        "spec": spec,
    }
    return ScaledObjectResult(manifest, warnings)


def _target_ref(name: str) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


def _owned_metadata(deployment_metadata: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """Metadata of an object Kapa keeps for a Deployment: named like it, labelled as Kapa's and, with the
    Deployment's uid known, owned by it (so deleting the Deployment deletes the object too)."""
    name = str(deployment_metadata["name"])
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY_LABELS)}
    if deployment_metadata.get("uid"):
        metadata["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": deployment_metadata["uid"]}
        ]
    return metadata


def _hpa_min_replicas(settings: ServiceConfig, max_replicas: int) -> int:
    """An HPA never goes to zero: min-scale, at least one pod, within the maximum."""
    return min(max(1, settings.min_scale), max_replicas)


def _resource_value(metric: str, target: float) -> str:
    """Knative's units for the HPA class's `autoscaling.knative.dev/target`: cpu in percent of the pods'
    requests, memory in MiB per pod."""
    return str(round(target)) if metric == contract.METRIC_CPU else f"{round(target)}Mi"


def resource_trigger(metric: str, target: float) -> dict[str, Any]:
    """KEDA's cpu or memory trigger for Knative's HPA class (see _resource_value for the units)."""
    metric_type = "Utilization" if metric == contract.METRIC_CPU else "AverageValue"
    return {"type": metric, "metricType": metric_type, "metadata": {"value": _resource_value(metric, target)}}


def horizontal_pod_autoscaler(deployment: Mapping[str, Any], config: AutoscalerConfig | None = None) -> dict[str, Any] | None:
    """For `actuator: direct`: the autoscaling/v2 HPA of a Deployment of Knative's HPA class (cpu as a
    utilisation percentage, memory as MiB per pod, never under one pod), owned by it; None for the KPA class,
    which the scaler itself scales."""
    metadata = deployment.get("metadata") or {}
    settings, _ = service_config(config or AutoscalerConfig.default(), deployment_spec(deployment))
    if settings.autoscaler_class != contract.CLASS_HPA:
        return None
    value = _resource_value(settings.metric, settings.total_target)
    if settings.metric == contract.METRIC_CPU:
        target: dict[str, Any] = {"type": "Utilization", "averageUtilization": int(value)}
    else:
        target = {"type": "AverageValue", "averageValue": value}
    max_replicas = settings.max_scale or UNBOUNDED_MAX_REPLICAS
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _owned_metadata(metadata, str(metadata["namespace"])),
        "spec": {
            "scaleTargetRef": _target_ref(str(metadata["name"])),
            "minReplicas": _hpa_min_replicas(settings, max_replicas),
            "maxReplicas": max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": settings.metric, "target": target}}],
        },
    }
