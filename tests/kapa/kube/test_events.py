"""kapa.kube.events without a cluster: the webhook and the scaler write one Event per problem.

The recorder against a real API server: tests/k8s/test_scaler_kubernetes.py (the scaler's reporter) and
tests/kapa/kube/test_webhook.py (the webhook's, against a stand-in API server that counts creations).
"""

from __future__ import annotations

from datetime import datetime, timezone

from kapa.core import contract
from kapa.core.settings import ConfigError
from kapa.kube.events import annotation_event, event_name
from kapa.kube.webhook import EVENT_SOURCE as WEBHOOK_SOURCE
from scaler.kubernetes import EVENT_SOURCE as SCALER_SOURCE

NOW = datetime(2026, 12, 6, 9, 0, 0, tzinfo=timezone.utc)
#: What the webhook knows at admission (no uid yet) and what the scaler's catalog knows (with the uid).
WEBHOOK_INVOLVED = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "ns", "name": "a"}
SCALER_INVOLVED = {**WEBHOOK_INVOLVED, "uid": "uid-a"}


def test_one_problem_is_one_event_whichever_part_reports_it() -> None:
    error = ConfigError("autoscaling.knative.dev/target", "ns/a", "not a number: 'ten'")
    from_webhook = annotation_event(error, WEBHOOK_INVOLVED, NOW, WEBHOOK_SOURCE)
    from_scaler = annotation_event(error, SCALER_INVOLVED, NOW, SCALER_SOURCE)
    # The same name: the API server keeps the first and answers the second creation 409.
    assert from_webhook["metadata"]["name"] == from_scaler["metadata"]["name"] == event_name(error, SCALER_INVOLVED)
    assert from_webhook["message"] == from_scaler["message"] == (
        "annotation autoscaling.knative.dev/target of ns/a: not a number: 'ten'"
    )
    assert from_scaler["involvedObject"] == SCALER_INVOLVED
    assert (from_scaler["type"], from_scaler["reason"]) == ("Warning", contract.EVENT_REASON_INVALID_ANNOTATION)
    assert from_scaler["source"] == {"component": "kapa-scaler"} and from_scaler["reportingComponent"] == "kapa-scaler"
    assert from_webhook["source"] == {"component": "kapa-webhook"}


def test_different_problems_or_objects_are_different_events() -> None:
    target = ConfigError("autoscaling.knative.dev/target", "ns/a", "not a number: 'ten'")
    window = ConfigError("autoscaling.knative.dev/window", "ns/a", "not a duration: 'x'")
    other = {**WEBHOOK_INVOLVED, "name": "b"}
    names = {event_name(target, WEBHOOK_INVOLVED), event_name(window, WEBHOOK_INVOLVED), event_name(target, other)}
    assert len(names) == 3
