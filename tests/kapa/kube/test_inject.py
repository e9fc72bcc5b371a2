"""Sidecar injection: the pure rewrite shared by the webhook and `kapa inject`, and the command itself."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kapa.core import contract
from kapa.kube.inject import (
    METRICS_PORT_NAME,
    SERVING_PORT_NAME,
    QUEUE_PROXY_CONTAINER,
    InjectionError,
    inject_document,
    inject_stream,
    is_enrolled,
)


def deployment(
    annotations: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    enrolled: bool = True,
) -> dict[str, Any]:
    labels = {"app": "hello"} | ({contract.ANNOTATION_ENABLED: "true"} if enrolled else {})
    app = {
        "name": "app",
        "image": "hello:1",
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "hello", "namespace": "shop", "labels": labels, "annotations": annotations or {}},
        "spec": {
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": containers if containers is not None else [app]},
            },
        },
    }


def pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    return document["spec"]["template"]["spec"] if document["kind"] == "Deployment" else document["spec"]


def queue_proxy(document: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(document)["containers"] if c["name"] == QUEUE_PROXY_CONTAINER]
    return container


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_injects_queue_proxy_with_contract_env_ports_and_probe() -> None:
    injection = inject_document(deployment({contract.ANNOTATION_CONTAINER_CONCURRENCY: "10"}), image="kapa:test")
    assert injection.changed and injection.warnings == ()
    document = injection.document
    app, sidecar = pod_spec(document)["containers"]
    assert sidecar["name"] == QUEUE_PROXY_CONTAINER
    assert sidecar["image"] == "kapa:test"
    assert sidecar["command"] == ["kapa", "queue-proxy"]
    assert {p["containerPort"] for p in sidecar["ports"]} == {
        contract.QUEUE_SERVING_PORT,
        contract.QUEUE_METRICS_PORT,
        contract.QUEUE_ADMIN_PORT,
    }
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]}[METRICS_PORT_NAME] == contract.QUEUE_METRICS_PORT
    values = env(sidecar)
    assert values[contract.ENV_USER_PORT] == "8000"
    assert values[contract.ENV_QUEUE_SERVING_PORT] == str(contract.QUEUE_SERVING_PORT)
    assert values[contract.ENV_CONTAINER_CONCURRENCY] == "10"
    assert values[contract.ENV_REVISION_TIMEOUT_SECONDS] == str(contract.DEFAULT_REVISION_TIMEOUT_SECONDS)
    assert values[contract.ENV_SERVING_NAMESPACE] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert values[contract.ENV_SERVING_SERVICE] == "hello"
    # The app's own probe goes to the queue-proxy, its named port made a number.
    assert json.loads(values[contract.ENV_SERVING_READINESS_PROBE]) == {
        "httpGet": {"path": "/healthz", "port": 8000},
        "periodSeconds": 2,
    }
    # ... and Kubernetes now asks the queue-proxy, with the app's timings kept.
    assert app["readinessProbe"] == {
        "httpGet": {"path": contract.READY_PATH, "port": contract.QUEUE_ADMIN_PORT},
        "periodSeconds": 2,
    }
    for probe in ("readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"]["port"] == contract.QUEUE_ADMIN_PORT
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["resources"]["requests"]
    template = document["spec"]["template"]
    assert template["spec"]["terminationGracePeriodSeconds"] == (
        contract.DEFAULT_REVISION_TIMEOUT_SECONDS + contract.DEFAULT_DRAIN_SECONDS
    )
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(contract.QUEUE_METRICS_PORT)
    assert template["metadata"]["labels"][contract.ANNOTATION_ENABLED] == "true"


def test_input_is_not_mutated_and_second_injection_changes_nothing() -> None:
    original = deployment()
    snapshot = copy.deepcopy(original)
    once = inject_document(original).document
    assert original == snapshot
    twice = inject_document(once)
    assert not twice.changed
    assert twice.document == once


@pytest.mark.parametrize(
    ("annotations", "timeout_env", "concurrency_env", "grace_s", "warned_key"),
    [
        ({contract.ANNOTATION_TIMEOUT_SECONDS: "60"}, "60", "0", 60 + contract.DEFAULT_DRAIN_SECONDS, None),
        ({contract.ANNOTATION_TIMEOUT_SECONDS: "soon"}, "300", "0", 330, contract.ANNOTATION_TIMEOUT_SECONDS),
        ({contract.ANNOTATION_TIMEOUT_SECONDS: "0"}, "300", "0", 330, contract.ANNOTATION_TIMEOUT_SECONDS),
        ({contract.ANNOTATION_CONTAINER_CONCURRENCY: "-1"}, "300", "0", 330, contract.ANNOTATION_CONTAINER_CONCURRENCY),
        ({contract.ANNOTATION_CONTAINER_CONCURRENCY: "2.5"}, "300", "0", 330, contract.ANNOTATION_CONTAINER_CONCURRENCY),
        ({contract.ANNOTATION_CONTAINER_CONCURRENCY: " 3 "}, "300", "3", 330, None),
        # Knative's upper bounds, as the scaler and the activator apply them.
        ({contract.ANNOTATION_CONTAINER_CONCURRENCY: "2000"}, "300", "0", 330, contract.ANNOTATION_CONTAINER_CONCURRENCY),
        ({contract.ANNOTATION_TIMEOUT_SECONDS: "900"}, "300", "0", 330, contract.ANNOTATION_TIMEOUT_SECONDS),
        ({contract.ANNOTATION_TIMEOUT_SECONDS: "2.5"}, "2.5", "0", 3 + contract.DEFAULT_DRAIN_SECONDS, None),
    ],
)
def test_annotations_and_malformed_values_fall_back_with_a_warning_naming_the_key(
    annotations: dict[str, str], timeout_env: str, concurrency_env: str, grace_s: int, warned_key: str | None
) -> None:
    injection = inject_document(deployment(annotations))
    values = env(queue_proxy(injection.document))
    assert values[contract.ENV_REVISION_TIMEOUT_SECONDS] == timeout_env
    assert values[contract.ENV_CONTAINER_CONCURRENCY] == concurrency_env
    assert pod_spec(injection.document)["terminationGracePeriodSeconds"] == grace_s
    if warned_key is None:
        assert injection.warnings == ()
    else:
        (warning,) = injection.warnings
        assert warned_key in warning and "shop/hello" in warning and "using" in warning


def test_pod_template_annotations_override_the_deployments() -> None:
    document = deployment({contract.ANNOTATION_CONTAINER_CONCURRENCY: "5"})
    document["spec"]["template"]["metadata"]["annotations"] = {contract.ANNOTATION_CONTAINER_CONCURRENCY: "7"}
    assert env(queue_proxy(inject_document(document).document))[contract.ENV_CONTAINER_CONCURRENCY] == "7"


def test_longer_grace_period_is_kept() -> None:
    document = deployment()
    document["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 900
    assert pod_spec(inject_document(document).document)["terminationGracePeriodSeconds"] == 900


def test_the_app_waits_for_the_queue_proxys_drain_before_its_sigterm() -> None:
    result = inject_document(deployment())
    app = pod_spec(result.document)["containers"][0]
    assert app["lifecycle"]["preStop"] == {
        "httpGet": {"path": contract.WAIT_FOR_DRAIN_PATH, "port": contract.QUEUE_ADMIN_PORT}}
    own = {"exec": {"command": ["flush-caches"]}}
    containers = [{**pod_spec(deployment())["containers"][0], "lifecycle": {"preStop": own}}]
    kept = inject_document(deployment(containers=containers))
    assert pod_spec(kept.document)["containers"][0]["lifecycle"]["preStop"] == own
    assert any("preStop" in warning and contract.WAIT_FOR_DRAIN_PATH in warning for warning in kept.warnings)


def test_app_without_probe_or_port_gets_tcp_check_on_default_user_port() -> None:
    document = deployment(containers=[{"name": "app", "image": "hello:1"}])
    injected = inject_document(document).document
    values = env(queue_proxy(injected))
    assert values[contract.ENV_USER_PORT] == str(contract.USER_PORT)
    assert json.loads(values[contract.ENV_SERVING_READINESS_PROBE]) == {"tcpSocket": {"port": contract.USER_PORT}}
    assert pod_spec(injected)["containers"][0]["readinessProbe"]["httpGet"]["path"] == contract.READY_PATH


def test_exec_probe_stays_on_the_app_with_a_warning() -> None:
    exec_probe = {"exec": {"command": ["true"]}, "periodSeconds": 5}
    document = deployment(containers=[{"name": "app", "image": "x", "readinessProbe": exec_probe}])
    injection = inject_document(document)
    assert pod_spec(injection.document)["containers"][0]["readinessProbe"] == exec_probe
    assert "neither httpGet nor tcpSocket" in injection.warnings[0]


def test_https_probe_becomes_a_tcp_check_with_a_warning() -> None:
    probe = {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}, "failureThreshold": 5}
    document = deployment(containers=[{"name": "app", "image": "x", "readinessProbe": probe}])
    injection = inject_document(document)
    values = env(queue_proxy(injection.document))
    assert json.loads(values[contract.ENV_SERVING_READINESS_PROBE]) == {"tcpSocket": {"port": 8443}, "failureThreshold": 5}
    assert "HTTPS" in injection.warnings[0]


@pytest.mark.parametrize(
    "probe",
    [
        None,
        {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2, "timeoutSeconds": 3},
        {"tcpSocket": {"port": 8000}, "failureThreshold": 7},
        {"exec": {"command": ["true"]}},
        {"httpGet": {"path": "/", "port": 8000, "scheme": "HTTPS"}},
    ],
)
def test_the_queue_proxy_accepts_the_environment_injection_gives_it(probe: dict[str, Any] | None) -> None:
    """The sidecar's environment parsed by the queue-proxy's own configuration code, as it will be at start."""
    from queue_proxy.config import Config

    app: dict[str, Any] = {"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 8000}]}
    if probe is not None:
        app["readinessProbe"] = probe
    annotations = {contract.ANNOTATION_CONTAINER_CONCURRENCY: "4", contract.ANNOTATION_TIMEOUT_SECONDS: "45"}
    values = env(queue_proxy(inject_document(deployment(annotations, containers=[app])).document))
    values[contract.ENV_SERVING_NAMESPACE] = "shop"  # the downward API's part
    config = Config.from_env(values)
    assert (config.user_port, config.container_concurrency, config.revision_timeout_s) == (8000, 4, 45.0)
    assert (config.serving_port, config.metrics_port, config.admin_port) == (
        contract.QUEUE_SERVING_PORT, contract.QUEUE_METRICS_PORT, contract.QUEUE_ADMIN_PORT,
    )
    assert (config.namespace, config.service) == ("shop", "hello")
    expected_kind = "http" if probe and "httpGet" in probe and "scheme" not in probe["httpGet"] else "tcp"
    assert config.readiness_probe.kind == expected_kind and config.readiness_probe.port == 8000
    if probe and "periodSeconds" in probe:
        assert (config.readiness_probe.period_s, config.readiness_probe.timeout_s) == (2.0, 3.0)


def test_the_container_with_ports_serves_in_a_multi_container_pod() -> None:
    containers = [
        {"name": "log-shipper", "image": "x"},
        {"name": "web", "image": "y", "ports": [{"containerPort": 3000}]},
    ]
    injected = inject_document(deployment(containers=containers)).document
    assert env(queue_proxy(injected))[contract.ENV_USER_PORT] == "3000"
    assert "readinessProbe" not in pod_spec(injected)["containers"][0]


@pytest.mark.parametrize(
    ("containers", "message"),
    [
        ([], "no containers"),
        (
            [{"name": "a", "ports": [{"containerPort": 1}]}, {"name": "b", "ports": [{"containerPort": 2}]}],
            "several containers declare ports (a, b)",
        ),
        ([{"name": "a", "ports": [{"containerPort": contract.QUEUE_SERVING_PORT}]}], "reserved for the queue-proxy"),
        ([{"name": "a", "ports": [{"containerPort": "http"}]}], "not a port number"),
        (
            [{"name": "a", "readinessProbe": {"httpGet": {"path": "/", "port": "web"}}}],
            "unknown port 'web'",
        ),
    ],
)
def test_pod_specs_that_cannot_carry_a_sidecar_are_refused_clearly(
    containers: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(InjectionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        inject_document(deployment(containers=containers))


def test_pod_from_a_deployment_is_named_after_the_deployment() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "hello-6d9f7c5b8-",
            "labels": {contract.ANNOTATION_ENABLED: "true", "pod-template-hash": "6d9f7c5b8"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "hello-6d9f7c5b8", "apiVersion": "apps/v1"}],
        },
        "spec": {"containers": [{"name": "app", "image": "x"}]},
    }
    injected = inject_document(pod).document
    assert env(queue_proxy(injected))[contract.ENV_SERVING_SERVICE] == "hello"


@pytest.mark.parametrize(
    ("document", "enrolled"),
    [
        (deployment(), True),
        (deployment(enrolled=False), False),
        (deployment({contract.ANNOTATION_ENABLED: "true"}, enrolled=False), True),
        (deployment({contract.ANNOTATION_ENABLED: "false"}, enrolled=False), False),
        ({"kind": "ConfigMap", "metadata": {"labels": {contract.ANNOTATION_ENABLED: "true"}}}, False),
    ],
)
def test_enrollment(document: dict[str, Any], enrolled: bool) -> None:
    assert is_enrolled(document) is enrolled
    assert inject_document(document).changed is enrolled


def test_app_prometheus_annotations_are_kept_with_a_warning() -> None:
    document = deployment()
    document["spec"]["template"]["metadata"]["annotations"] = {"prometheus.io/port": "8000"}
    injection = inject_document(document)
    assert injection.document["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert any("prometheus.io/port" in w for w in injection.warnings)


def service(ports: list[dict[str, Any]], enrolled: bool = True) -> dict[str, Any]:
    labels = {contract.ANNOTATION_ENABLED: "true"} if enrolled else {}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello", "labels": labels},
            "spec": {"selector": {"app": "hello"}, "ports": ports}}


@pytest.mark.parametrize(
    ("ports", "routed"),
    [
        ([{"port": 80, "targetPort": 8000}], 0),
        ([{"name": "metrics", "port": 9000}, {"name": "http", "port": 80, "targetPort": "web"}], 1),
    ],
)
def test_enrolled_service_sends_its_serving_port_through_the_queue_proxy(ports: list[dict[str, Any]], routed: int) -> None:
    original = service(ports)
    injection = inject_document(original)
    assert injection.changed
    new_ports = injection.document["spec"]["ports"]
    assert new_ports[routed]["targetPort"] == SERVING_PORT_NAME
    assert [p for i, p in enumerate(new_ports) if i != routed] == [p for i, p in enumerate(ports) if i != routed]
    assert original["spec"]["ports"] == ports  # the input is untouched
    assert not inject_document(injection.document).changed
    assert not inject_document(service(ports, enrolled=False)).changed


def test_service_with_several_unnamed_ports_is_refused_clearly() -> None:
    with pytest.raises(InjectionError, match="several ports and none named 'http'"):
        inject_document(service([{"port": 80}, {"port": 81}]))


def test_pods_serving_port_is_the_one_enrolled_services_target() -> None:
    injected = inject_document(deployment()).document
    assert {"name": SERVING_PORT_NAME, "containerPort": contract.QUEUE_SERVING_PORT} in queue_proxy(injected)["ports"]


# --- the stream and the command ---------------------------------------------------------------------------

SERVICE_DOC = """\
# the Service stays exactly as written, comment included
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  ports: [{port: 80, targetPort: 8000}]
"""


def manifest() -> str:
    return SERVICE_DOC + "---\n" + yaml.safe_dump(deployment()) + "---\n" + yaml.safe_dump(deployment(enrolled=False))


def test_stream_injects_enrolled_documents_and_passes_the_rest_byte_for_byte() -> None:
    output, warnings = inject_stream(manifest())
    assert warnings == []
    assert output.startswith(SERVICE_DOC)
    documents = list(yaml.safe_load_all(output))
    assert [d["kind"] for d in documents] == ["Service", "Deployment", "Deployment"]
    assert QUEUE_PROXY_CONTAINER in [c["name"] for c in pod_spec(documents[1])["containers"]]
    assert output.endswith("---\n" + yaml.safe_dump(deployment(enrolled=False)))
    assert inject_stream(output) == (output, [])


def run_kapa(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kapa", "inject", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_command_writes_injected_yaml_to_stdout(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(manifest())
    result = run_kapa("-f", str(path), "--image", "kapa:9")
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert queue_proxy(documents[1])["image"] == "kapa:9"
    assert run_kapa("-f", "-", stdin=result.stdout).stdout == result.stdout


def test_command_prints_warnings_to_stderr(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(deployment({contract.ANNOTATION_TIMEOUT_SECONDS: "forever"})))
    result = run_kapa("-f", str(path))
    assert result.returncode == 0
    assert f"warning: {contract.ANNOTATION_TIMEOUT_SECONDS} (shop/hello): not a number: 'forever'" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Deployment\nmetadata: {name: [unclosed\n", "document 1:"),
        ("---\nkind: Service\n---\n- just\n- a list\n", "document 2: expected a Kubernetes object"),
        (yaml.safe_dump(deployment(containers=[])), "document 1: Deployment hello: spec has no containers"),
    ],
)
def test_command_rejects_malformed_input_with_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_kapa("-f", str(path))
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""


def test_command_reports_a_missing_file(tmp_path: Path) -> None:
    result = run_kapa("-f", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr


SCALER_ADDRESS = f"kapa-scaler.kapa.svc:{contract.SCALER_GRPC_PORT}"


def test_scaled_objects_follow_enrolled_deployments_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(manifest().rstrip("\n"))  # no final newline: the ScaledObject still starts a new document
    result = run_kapa("-f", str(path), "--scaled-objects", SCALER_ADDRESS)
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert kinds == ["Service", "Deployment", "ScaledObject", "Deployment"]
    scaled = list(yaml.safe_load_all(result.stdout))[2]
    assert scaled["metadata"] == {"name": "hello", "namespace": "shop", "labels": {"app.kubernetes.io/managed-by": "kapa"}}
    assert scaled["spec"]["triggers"][0]["metadata"]["scalerAddress"] == SCALER_ADDRESS
    assert "ScaledObject" not in run_kapa("-f", str(path)).stdout
