"""The admission webhook (`kapa inject --serve`) over real HTTPS: AdmissionReview in, the JSON patch of the
same injection `kapa inject` makes out."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kapa.core import contract
from kapa.kube.inject import QUEUE_PROXY_CONTAINER, SERVING_PORT_NAME, inject_document
from kapa.kube.events import annotation_event, event_name
from kapa.kube.webhook import EVENT_SOURCE, MUTATE_PATH, admit, event_owner, webhook_app
from tests.support import free_port, running, wait_for_port, serve_app

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")


def apply_patch(document: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the `add` operations the webhook emits (RFC 6902: add replaces an existing member)."""
    result = copy.deepcopy(document)
    for op in patch:
        assert op["op"] == "add"
        *parents, last = op["path"].strip("/").split("/")
        target = result
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = op["value"]
    return result


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    # As the ReplicaSet controller creates it: no name yet, an owner and the pod-template-hash label.
    metadata: dict[str, Any] = {
        "generateName": "hello-7c9f5-",
        "labels": {contract.ANNOTATION_ENABLED: "true", "pod-template-hash": "7c9f5", **(labels or {})},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "hello-7c9f5", "uid": "u1"}],
    }
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "app", "image": "hello:1", "ports": [{"containerPort": 8000}]}]},
    }


def review(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": str(uuid.uuid4()), "namespace": "shop", "operation": "CREATE", "object": obj},
    }


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_webhook_patches_an_enrolled_pod_like_kapa_inject(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    port = free_port()
    command = [sys.executable, "-m", "kapa", "inject", "--serve", "--host", "127.0.0.1", "--port", str(port),
               "--tls-cert", str(cert), "--tls-key", str(key), "--image", "kapa:hook"]
    client_tls = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{port}"
    with running(command):
        wait_for_port(port, timeout_s=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as session:
            for path in (contract.READY_PATH, contract.LIVE_PATH):
                async with session.get(f"{base}{path}") as response:
                    assert response.status == 200
            submitted = pod(annotations={contract.ANNOTATION_TIMEOUT_SECONDS: "never"})
            sent = review(submitted)
            async with session.post(f"{base}/mutate", json=sent) as response:
                assert response.status == 200
                answer = await response.json()
            async with session.post(f"{base}/mutate", data=b"{not json") as response:
                assert response.status == 400
                assert "kapa webhook" in await response.text()
            async with session.post(f"{base}/mutate", json={"kind": "AdmissionReview"}) as response:
                assert response.status == 400
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    result = answer["response"]
    assert result["uid"] == sent["request"]["uid"] and result["allowed"] is True
    assert result["patchType"] == "JSONPatch"
    patched = apply_patch(submitted, json.loads(base64.b64decode(result["patch"])))
    assert patched == inject_document(submitted, "kapa:hook").document
    assert [c["name"] for c in patched["spec"]["containers"]] == ["app", QUEUE_PROXY_CONTAINER]
    assert {"name": contract.ENV_SERVING_SERVICE, "value": "hello"} in patched["spec"]["containers"][1]["env"]
    (warning,) = result["warnings"]
    assert warning.startswith(f"kapa: {contract.ANNOTATION_TIMEOUT_SECONDS} (shop/hello): ") and "'never'" in warning


def test_already_injected_or_unenrolled_pods_are_allowed_without_a_patch() -> None:
    injected = inject_document(pod()).document
    for obj in (injected, {**pod(), "metadata": {"generateName": "x-"}}):
        result = admit(review(obj), "kapa:hook").review["response"]
        assert result["allowed"] is True and "patch" not in result


def test_a_pod_that_cannot_carry_the_sidecar_is_allowed_with_a_warning() -> None:
    clash = pod()
    clash["spec"]["containers"][0]["ports"] = [{"containerPort": contract.QUEUE_SERVING_PORT}]
    result = admit(review(clash), "kapa:hook").review["response"]
    assert result["allowed"] is True and "patch" not in result
    assert "not injected" in result["warnings"][0] and "reserved for the queue-proxy" in result["warnings"][0]


def test_an_enrolled_service_is_patched_to_target_the_queue_proxy() -> None:
    submitted = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "hello", "labels": {contract.ANNOTATION_ENABLED: "true"}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8000}]},
    }
    result = admit(review(submitted), "kapa:hook").review["response"]
    patched = apply_patch(submitted, json.loads(base64.b64decode(result["patch"])))
    assert patched == inject_document(submitted).document
    assert patched["spec"]["ports"][0]["targetPort"] == SERVING_PORT_NAME


# --- Events about bad annotations -------------------------------------------------------------------------------

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "hello"}


def test_bad_sidecar_annotations_become_events_on_the_deployment() -> None:
    bad = {contract.ANNOTATION_TIMEOUT_SECONDS: "never", contract.ANNOTATION_CONTAINER_CONCURRENCY: "-3"}
    admission = admit(review(pod(annotations=bad)), "kapa:hook")
    assert admission.owner == DEPLOYMENT
    assert sorted(error.key for error in admission.problems) == sorted(bad)
    assert len(admission.review["response"]["warnings"]) == 2  # the admission warnings stay
    events = [annotation_event(error, {**DEPLOYMENT, "uid": "d-1"}, NOW, EVENT_SOURCE) for error in admission.problems]
    for event, error in zip(events, admission.problems):
        assert event["involvedObject"] == {**DEPLOYMENT, "uid": "d-1"}
        assert (event["type"], event["reason"]) == ("Warning", contract.EVENT_REASON_INVALID_ANNOTATION)
        assert event["message"] == f"annotation {error.key} of shop/hello: {error.message}"
        assert event["metadata"]["namespace"] == "shop" and event["metadata"]["name"].startswith("hello.")
        assert (event["firstTimestamp"], event["lastTimestamp"], event["count"]) == ("2026-11-29T12:00:00Z",) * 2 + (1,)
        assert event["source"] == {"component": EVENT_SOURCE}
    timeout = next(e for e in events if contract.ANNOTATION_TIMEOUT_SECONDS in e["message"])
    assert "'never'" in timeout["message"] and "using 300" in timeout["message"]
    # Named after the object and the problem: another pod (or webhook replica) names the same Event.
    again = admit(review(pod(annotations=bad)), "kapa:hook")
    assert [event_name(e, DEPLOYMENT) for e in again.problems] == [e["metadata"]["name"] for e in events]
    assert len({e["metadata"]["name"] for e in events}) == 2


def test_good_annotations_and_uninjectable_pods_record_no_events() -> None:
    assert admit(review(pod(annotations={contract.ANNOTATION_TIMEOUT_SECONDS: "30"})), "kapa:hook").problems == ()
    clash = pod(annotations={contract.ANNOTATION_TIMEOUT_SECONDS: "never"})
    clash["spec"]["containers"][0]["ports"] = [{"containerPort": contract.QUEUE_SERVING_PORT}]
    assert admit(review(clash), "kapa:hook").problems == ()  # not injected: the warning says why


def with_metadata(**metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(pod(), DEPLOYMENT, id="pod-of-a-deployment"),
        pytest.param(
            with_metadata(name="db-0", ownerReferences=[
                {"apiVersion": "v1", "kind": "Service", "name": "other", "uid": "s-1"},
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "ss-1", "controller": True},
            ]),
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "namespace": "shop", "name": "db", "uid": "ss-1"},
            id="pod-of-another-controller",
        ),
        pytest.param(with_metadata(name="lonely"), {"apiVersion": "v1", "kind": "Pod", "namespace": "shop",
                                                    "name": "lonely"}, id="bare-named-pod"),
        pytest.param(with_metadata(generateName="anon-"), None, id="nothing-to-name"),
    ],
)  # fmt: skip
def test_event_owner(obj: dict[str, Any], expected: dict[str, str] | None) -> None:
    assert event_owner(obj, "shop") == expected


async def test_an_unreachable_api_server_never_delays_admission(caplog: pytest.LogCaptureFixture) -> None:
    """Events go out after the answer: with the API server down the webhook still answers at once, logs the
    failed Event, and records each problem only once per EVENT_REPEAT_AFTER_S however many pods show it."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    configuration.retries = 0
    caplog.set_level(logging.WARNING, logger="kapa.kube.webhook")
    port = free_port()
    runner = await serve_app(webhook_app("kapa:hook", client.ApiClient(configuration)), port)
    bad = pod(annotations={contract.ANNOTATION_TIMEOUT_SECONDS: "never"})
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # three pods of the same Deployment
                started = time.monotonic()
                async with session.post(f"http://127.0.0.1:{port}{MUTATE_PATH}", json=review(bad)) as response:
                    answer = await response.json()
                assert time.monotonic() - started < 1.0
                assert answer["response"]["allowed"] is True and "patch" in answer["response"]
            for _ in range(100):
                if any(r.getMessage() == "cannot create event" for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("cannot create event") == 1
    assert messages.count("cannot look the deployment up for its events") == 1
