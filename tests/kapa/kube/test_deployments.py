"""kapa.kube.deployments without a cluster: enrolment, annotation merging, hosts and subscriptions from
watch-shaped JSON. The same catalog against a real API server: tests/k8s/test_scaler_kubernetes.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kapa.core import contract
from kapa.kube.deployments import DeploymentCatalog, catalog_entries, deployment_spec
from kapa.core.services import ServiceEntry, ServiceKey, ServiceSpec


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
    catalog = DeploymentCatalog(api=None)
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


def test_hosts_are_cluster_names_plus_the_annotations_in_the_cluster_domain() -> None:
    spec = ServiceSpec(ServiceKey("ns", "a"), {contract.ANNOTATION_HOSTS: " A.example.com, ,b.example.com,a.example.com"})
    entry = catalog_entries([spec], cluster_domain="corp.internal")[spec.key]
    assert entry.hosts == ("a.ns", "a.ns.svc", "a.ns.svc.corp.internal", "a.example.com", "b.example.com")


def test_a_bad_or_taken_extra_host_costs_only_that_host_the_same_way_everywhere() -> None:
    first = ServiceSpec(ServiceKey("ns", "a"), {contract.ANNOTATION_HOSTS: "shared.example, b.ns"})
    second = ServiceSpec(ServiceKey("ns", "b"), {contract.ANNOTATION_HOSTS: "shared.example, bad host!, own.example"})
    for order in ([first, second], [second, first]):  # the key order decides, not the arrival order
        entries = catalog_entries(order)
        assert entries[first.key].extra_hosts == ("shared.example",), "b.ns is b's own name"
        assert entries[second.key].extra_hosts == ("own.example",)


def test_subscribers_get_every_change_and_the_current_entries_on_subscribing() -> None:
    catalog = DeploymentCatalog(api=None)
    seen: list[set[ServiceKey]] = []

    def listener(entries: Mapping[ServiceKey, ServiceEntry]) -> None:
        seen.append(set(entries))

    catalog.subscribe(listener)
    assert seen == [], "nothing is known before the first list"
    catalog.handle_list({"items": []})
    assert seen == [set()], "an empty first list is news too: the catalog is known to be empty"
    catalog.handle_event({"type": "ADDED", "object": deployment("a", ENROLLED)})
    catalog.handle_event({"type": "MODIFIED", "object": deployment("a", ENROLLED, replicas=4)})  # scale only
    catalog.handle_event({"type": "MODIFIED", "object": deployment("a", {**ENROLLED, contract.ANNOTATION_HOSTS: "x.y"})})
    catalog.handle_event({"type": "MODIFIED", "object": deployment("a", {})})  # unlabelled
    a = ServiceKey("ns", "a")
    assert seen == [set(), {a}, {a}, set()], "a change of replicas alone is no catalog change"
    late: list[set[ServiceKey]] = []
    catalog.subscribe(lambda entries: late.append(set(entries)))
    assert late == [set()]


def test_spec_listener_hears_each_new_or_changed_spec_once() -> None:
    heard: list[tuple[str, dict[str, str]]] = []
    catalog = DeploymentCatalog(api=None, on_spec_change=lambda d, spec: heard.append((spec.key.name, dict(spec.annotations))))
    catalog.handle_list({"items": [deployment("a", ENROLLED), deployment("plain")]})
    catalog.handle_event({"type": "MODIFIED", "object": deployment("a", ENROLLED, replicas=3)})
    catalog.handle_event({"type": "MODIFIED", "object": deployment("a", {**ENROLLED, "autoscaling.knative.dev/target": "x"})})
    assert heard == [("a", ENROLLED), ("a", {**ENROLLED, "autoscaling.knative.dev/target": "x"})]
