"""scaler.kubernetes without a cluster: enrolment, annotation merging and Events from watch-shaped JSON.

The same classes against a real API server: tests/k8s/test_scaler_kubernetes.py.
"""

from __future__ import annotations

from typing import Any

from kapa import contract
from kapa.services import ServiceKey
from scaler.config import AutoscalerConfig, ConfigError
from kapa.webhook import event_name
from scaler.kubernetes import DeploymentCatalog, bad_annotation_event, deployment_spec


def deployment(name: str, annotations: dict[str, str] | None = None, template: dict[str, str] | None = None,
               labels: dict[str, str] | None = None, replicas: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "annotations": annotations or {},
                     "labels": labels or {}},
        "spec": {"replicas": replicas, "template": {"metadata": {"annotations": template or {}}}},
    }


ENROLLED = {contract.ANNOTATION_ENABLED: "true"}


def test_template_annotations_win_over_the_deployments() -> None:
    spec = deployment_spec(deployment("a", {**ENROLLED, "autoscaling.knative.dev/target": "5",
                                            "deployment.kubernetes.io/revision": "3"},
                                      {"autoscaling.knative.dev/target": "7"}))
    assert spec.key == ServiceKey("ns", "a")
    assert dict(spec.annotations) == {**ENROLLED, "autoscaling.knative.dev/target": "7"}, "only Kapa/Knative keys"


def test_catalog_offers_only_enrolled_deployments_and_follows_events() -> None:
    catalog = DeploymentCatalog(api=None, config=AutoscalerConfig.default())
    catalog.handle_list({"items": [
        deployment("by-annotation", ENROLLED, replicas=3),
        deployment("by-label", labels={contract.ANNOTATION_ENABLED: "true"}),
        deployment("plain"),
        deployment("disabled", {contract.ANNOTATION_ENABLED: "false"}),
    ]})
    assert set(catalog.services()) == {ServiceKey("ns", "by-annotation"), ServiceKey("ns", "by-label")}
    assert catalog.replicas(ServiceKey("ns", "by-annotation")) == 3
    assert catalog.replicas(ServiceKey("ns", "plain")) is None

    unchanged = catalog.services()[ServiceKey("ns", "by-label")]
    catalog.handle_event({"type": "MODIFIED", "object": deployment("plain", ENROLLED, replicas=0)})
    assert catalog.replicas(ServiceKey("ns", "plain")) == 0
    assert catalog.services()[ServiceKey("ns", "by-label")] is unchanged, "an unchanged spec keeps its identity"
    catalog.handle_event({"type": "DELETED", "object": deployment("by-annotation", ENROLLED)})
    assert set(catalog.services()) == {ServiceKey("ns", "by-label"), ServiceKey("ns", "plain")}
    catalog.handle_event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    assert len(catalog.services()) == 2


def test_bad_annotation_event_names_key_and_problem() -> None:
    error = ConfigError("autoscaling.knative.dev/target", "ns/a", "not a number: 'ten'")
    event = bad_annotation_event(deployment("a", ENROLLED), error)
    assert event["type"] == "Warning" and event["reason"] == contract.EVENT_REASON_INVALID_ANNOTATION
    assert event["involvedObject"] == {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "ns",
                                       "name": "a", "uid": "uid-a"}
    assert event["message"] == "annotation autoscaling.knative.dev/target: not a number: 'ten'"
    # The webhook's Event about the same problem has the same name: the API server keeps one.
    webhook_owner = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "ns", "name": "a"}
    assert event["metadata"]["name"] == event_name(error, webhook_owner)
