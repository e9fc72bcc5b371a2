"""The sidecar injector as a Kubernetes mutating admission webhook (`kapa inject --serve`).

The API server POSTs an AdmissionReview (admission.k8s.io/v1) for each Pod created, and each Service
created or updated, with the label kapa.dev/enabled=true; the answer allows it with a JSON patch made by
kapa.kube.inject.inject_document, the same rewrite `kapa inject -f` applies to manifests. The webhook never
blocks anything: an object that cannot be injected is allowed unchanged, and that reason, like any
malformed annotation, comes back as an admission warning (kubectl prints it) and a log line naming the key
and the service.

A malformed annotation is also recorded as a Warning Event on the pod's Deployment (the object its owner
edits and `kubectl describe`s), naming the key and the problem. Events are created in the background after
the answer is computed, through the Kubernetes API (in-cluster ServiceAccount, or --kubeconfig): a slow or
failing API server, or missing RBAC, costs a log line, never an admission. Each problem gets one Event per
EVENT_REPEAT_AFTER_S (every new pod of a broken Deployment repeats it), named after its content so webhook
replicas create the same Event instead of one each.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from kapa.core import contract
from kapa.kube.client import api_client
from kapa.kube.events import EventRecorder
from kapa.kube.inject import InjectionError, inject_document, pod_deployment_name
from kapa.core.log import get_logger
from kapa.core.settings import ConfigError

log = get_logger("kapa.kube.webhook")
MUTATE_PATH = "/mutate"
#: source.component and reportingComponent of the Events the webhook creates.
EVENT_SOURCE = "kapa-webhook"
_IMAGE_KEY = web.AppKey("image", str)
_RECORDER_KEY: web.AppKey[EventRecorder | None] = web.AppKey("events")


@dataclass(frozen=True)
class Admission:
    """The answer to one AdmissionReview, and the annotation problems to record as Events about `owner`."""

    review: dict[str, Any]
    problems: tuple[ConfigError, ...] = ()
    #: The involvedObject of those Events (without a uid: the recorder looks a Deployment's up); None when
    #: the object names nothing an Event can be about (a Pod with only a generateName and no Deployment).
    owner: dict[str, str] | None = None


def admit(review: Any, image: str) -> Admission:
    """Answer `review`; raises ValueError when it is not an AdmissionReview request."""
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict) or not request.get("uid") or not isinstance(request.get("object"), dict):
        raise ValueError("expected an admission.k8s.io/v1 AdmissionReview with request.uid and request.object")
    obj = request["object"]
    # The namespace is on the request, not (yet) on an object created with generateName.
    name = f"{request.get('namespace', '')}/{obj.get('metadata', {}).get('name') or request.get('name') or '?'}"
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    answer = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    try:
        injection = inject_document(obj, image, namespace=request.get("namespace"))
    except InjectionError as error:
        log.warning("not injected", object=name, error=str(error))
        response["warnings"] = [f"kapa: not injected: {error}"]
        return Admission(answer)
    for warning in injection.warnings:
        log.warning("annotation problem", object=name, problem=warning)
    if injection.warnings:
        response["warnings"] = [f"kapa: {w}" for w in injection.warnings]
    if injection.changed:
        patch = json_patch(injection.document)
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    owner = event_owner(obj, str(request.get("namespace") or "")) if injection.errors else None
    return Admission(answer, injection.errors, owner)


def event_owner(obj: Mapping[str, Any], namespace: str) -> dict[str, str] | None:
    """What an Event about an object under admission is about: a Pod's Deployment, else the controller that
    owns it (its ownerReference, uid included), else the object itself when it has a name."""
    metadata = obj.get("metadata") or {}
    namespace = str(metadata.get("namespace") or namespace)
    deployment = pod_deployment_name(metadata) if obj.get("kind") == "Pod" else None
    if deployment is not None:
        return {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": namespace, "name": deployment}
    owners = [o for o in metadata.get("ownerReferences") or [] if isinstance(o, dict)]
    controller = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if controller is not None and controller.get("name") and controller.get("kind"):
        owner = {"apiVersion": str(controller.get("apiVersion", "")), "kind": str(controller["kind"]),
                 "namespace": namespace, "name": str(controller["name"])}  # fmt: skip
        if controller.get("uid"):
            owner["uid"] = str(controller["uid"])
        return owner
    if metadata.get("name"):
        return {"apiVersion": str(obj.get("apiVersion", "v1")), "kind": str(obj.get("kind", "")),
                "namespace": namespace, "name": str(metadata["name"])}  # fmt: skip
    return None


def json_patch(injected: dict[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations turning the submitted object into the injected one, setting whole each part that
    injection touches ("add" replaces an existing member), so the patch is exact without a diff: a Pod's
    spec, labels and annotations; a Service's ports."""
    if injected["kind"] == "Service":
        return [{"op": "add", "path": "/spec/ports", "value": injected["spec"]["ports"]}]
    metadata = injected["metadata"]
    return [
        {"op": "add", "path": "/metadata/labels", "value": metadata["labels"]},
        {"op": "add", "path": "/metadata/annotations", "value": metadata["annotations"]},
        {"op": "add", "path": "/spec", "value": injected["spec"]},
    ]


def kubernetes_api(kubeconfig: Path | None) -> Any | None:
    """An ApiClient (kapa.kube.client's); None (events off) without a usable configuration."""
    from kubernetes import config

    try:
        return api_client(str(kubeconfig) if kubeconfig is not None else None)
    except (config.ConfigException, OSError) as error:
        log.warning("no Kubernetes API: annotation problems are admission warnings and log lines only",
                    error=str(error))  # fmt: skip
        return None


async def _mutate(request: web.Request) -> web.Response:
    try:
        review = await request.json()
        admission = admit(review, request.app[_IMAGE_KEY])
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        return web.Response(status=400, text=f"kapa webhook: {error}\n")
    recorder = request.app[_RECORDER_KEY]
    if recorder is not None and admission.problems and admission.owner is not None:
        recorder.record(admission.owner, admission.problems)
    return web.json_response(admission.review)


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def webhook_app(image: str, api: Any | None = None) -> web.Application:
    """The webhook's routes; with `api` (a kubernetes ApiClient) bad annotations also become Events."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[_IMAGE_KEY] = image
    app[_RECORDER_KEY] = None

    async def events(app: web.Application) -> Any:
        app[_RECORDER_KEY] = EventRecorder(api, EVENT_SOURCE) if api is not None else None
        yield
        recorder = app[_RECORDER_KEY]
        if recorder is not None:
            await recorder.close()

    app.cleanup_ctx.append(events)
    app.router.add_post(MUTATE_PATH, _mutate)
    app.router.add_get(contract.READY_PATH, _ok)
    app.router.add_get(contract.LIVE_PATH, _ok)
    return app


def serve(
    host: str, port: int, tls_cert: Path | None, tls_key: Path | None, image: str, kubeconfig: Path | None = None
) -> int:
    """Run the webhook until SIGTERM/SIGINT. The API server only calls webhooks over HTTPS; plain HTTP (no
    certificate given) is for trying it by hand."""
    context = None
    if tls_cert is not None and tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    api = kubernetes_api(kubeconfig)
    log.info("webhook listening", address=f"{host}:{port}", tls=context is not None, image=image, events=api is not None)
    web.run_app(webhook_app(image, api), host=host, port=port, ssl_context=context, print=None, access_log=None)
    return 0
