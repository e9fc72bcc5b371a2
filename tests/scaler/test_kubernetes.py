"""scaler.kubernetes without a cluster: the Event about a bad annotation.

The same classes against a real API server: tests/k8s/test_scaler_kubernetes.py.
"""

from __future__ import annotations

from kapa import contract
from scaler.config import ConfigError
from kapa.webhook import event_name
from scaler.kubernetes import bad_annotation_event

DEPLOYMENT = {"metadata": {"name": "a", "namespace": "ns", "uid": "uid-a",
                           "annotations": {contract.ANNOTATION_ENABLED: "true"}}}


def test_bad_annotation_event_names_key_and_problem() -> None:
    error = ConfigError("autoscaling.knative.dev/target", "ns/a", "not a number: 'ten'")
    event = bad_annotation_event(DEPLOYMENT, error)
    assert event["type"] == "Warning" and event["reason"] == contract.EVENT_REASON_INVALID_ANNOTATION
    assert event["involvedObject"] == {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "ns",
                                       "name": "a", "uid": "uid-a"}
    assert event["message"] == "annotation autoscaling.knative.dev/target: not a number: 'ten'"
    # The webhook's Event about the same problem has the same name: the API server keeps one.
    webhook_owner = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "ns", "name": "a"}
    assert event["metadata"]["name"] == event_name(error, webhook_owner)
