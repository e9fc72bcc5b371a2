"""The sidecar injector as a Kubernetes mutating admission webhook (`kapa inject --serve`).

The API server POSTs an AdmissionReview (admission.k8s.io/v1) for each Pod created, and each Service
created or updated, with the label kapa.dev/enabled=true; the answer allows it with a JSON patch made by
kapa.inject.inject_document, the same rewrite `kapa inject -f` applies to manifests. The webhook never
blocks anything: an object that cannot be injected is allowed unchanged, and that reason, like any
malformed annotation, comes back as an admission warning (kubectl prints it) and a log line naming the key
and the service.
"""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from kapa import contract
from kapa.inject import InjectionError, inject_document
from kapa.log import get_logger

log = get_logger("kapa.webhook")
MUTATE_PATH = "/mutate"
_IMAGE_KEY = web.AppKey("image", str)


def review_response(review: Any, image: str) -> dict[str, Any]:
    """The AdmissionReview answering `review`; raises ValueError when it is not an AdmissionReview request."""
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict) or not request.get("uid") or not isinstance(request.get("object"), dict):
        raise ValueError("expected an admission.k8s.io/v1 AdmissionReview with request.uid and request.object")
    obj = request["object"]
    # The namespace is on the request, not (yet) on an object created with generateName.
    name = f"{request.get('namespace', '')}/{obj.get('metadata', {}).get('name') or request.get('name') or '?'}"
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    try:
        injection = inject_document(obj, image, namespace=request.get("namespace"))
    except InjectionError as error:
        log.warning("not injected", object=name, error=str(error))
        response["warnings"] = [f"kapa: not injected: {error}"]
    else:
        for warning in injection.warnings:
            log.warning("annotation problem", object=name, problem=warning)
        if injection.warnings:
            response["warnings"] = [f"kapa: {w}" for w in injection.warnings]
        if injection.changed:
            patch = json_patch(injection.document)
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


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


async def _mutate(request: web.Request) -> web.Response:
    try:
        review = await request.json()
        answer = review_response(review, request.app[_IMAGE_KEY])
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        return web.Response(status=400, text=f"kapa webhook: {error}\n")
    return web.json_response(answer)


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def webhook_app(image: str) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[_IMAGE_KEY] = image
    app.router.add_post(MUTATE_PATH, _mutate)
    app.router.add_get(contract.READY_PATH, _ok)
    app.router.add_get(contract.LIVE_PATH, _ok)
    return app


def serve(host: str, port: int, tls_cert: Path | None, tls_key: Path | None, image: str) -> int:
    """Run the webhook until SIGTERM/SIGINT. The API server only calls webhooks over HTTPS; plain HTTP (no
    certificate given) is for trying it by hand."""
    context = None
    if tls_cert is not None and tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    log.info("webhook listening", address=f"{host}:{port}", tls=context is not None, image=image)
    web.run_app(webhook_app(image), host=host, port=port, ssl_context=context, print=None, access_log=None)
    return 0
