"""Sidecar injection: put the queue-proxy in front of an enrolled app, as Knative does for its revisions.

One pure function, `inject_document`, rewrites a Pod or a Deployment given as a plain dict. The mutating
admission webhook calls it on each Pod created in an enrolled namespace, and `kapa inject -f FILE` calls it
on manifests for GitOps users, so both produce the same pod spec. What it does:

- adds the `queue-proxy` container (`kapa queue-proxy`) with its serving, metrics and admin ports and its
  environment (kapa.core.contract names), including the app's own readiness probe as JSON, which the queue-proxy
  runs against the app itself;
- points the app's readiness probe at the queue-proxy's admin READY_PATH, so Kubernetes and the activator
  see one readiness, the queue-proxy's (unready while draining as well as while the app is unready);
- gives the app a preStop hook that waits on the queue-proxy's WAIT_FOR_DRAIN_PATH: Kubernetes signals all
  of a pod's containers at once, and without the hook the app would stop while the gateway and the
  activators still send the draining pod requests (each a 502). An app's own preStop hook is kept, with
  a warning;
- raises terminationGracePeriodSeconds to the revision timeout plus the drain period, so a pod that is
  draining is never killed with requests still inside;
- labels the pod `kapa.dev/enabled: "true"` (what the chart's PodMonitor selects) and adds the
  `prometheus.io/*` annotations for the usual 15 s scrape of the queue-proxy's METRICS_PATH;
- for an enrolled Service, points its serving port (the one named "http", or its only port) at the
  queue-proxy's named port, so its EndpointSlices (which the activator watches) and any client of the
  Service reach the app through the queue-proxy, counted.

Injection is idempotent: a pod that already has a queue-proxy container is returned unchanged. A malformed
`kapa.dev/*` annotation never stops injection: its default is used and a warning names the key and the
service (`kapa inject` prints it; the webhook returns it to the API client as an admission warning and
records it as an Event on the pod's Deployment).
Annotation values are parsed by kapa.core.settings, the scaler's and the activator's parser, with Knative's bounds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kapa import __version__
from kapa.core import contract
from kapa.kube.endpoints import DEFAULT_PORT_NAME
from kapa.core.services import ServiceKey, ServiceSpec
from kapa.core.settings import AutoscalerConfig, ConfigError, service_config

QUEUE_PROXY_CONTAINER: str = "queue-proxy"
#: Container port names (IANA service names, at most 15 characters). The chart's PodMonitor and raw scrape
#: config find the queue-proxy's metrics port by METRICS_PORT_NAME.
SERVING_PORT_NAME: str = "kapa-serving"
METRICS_PORT_NAME: str = "kapa-metrics"
ADMIN_PORT_NAME: str = "kapa-admin"
#: The port of an enrolled Service that carries requests; the activator finds the queue-proxy's port in the
#: Service's EndpointSlices under this name (or as the only port).
SERVICE_PORT_NAME: str = DEFAULT_PORT_NAME
#: The image `kapa inject` uses when not told; the chart passes its own image to the webhook.
DEFAULT_IMAGE: str = f"kapa:{__version__}"
#: Knative's default queue-proxy CPU request; memory sized for the Python proxy's resident set.
QUEUE_PROXY_REQUESTS: dict[str, str] = {"cpu": "25m", "memory": "64Mi"}
#: Annotations for Prometheus configurations that honour the common `prometheus.io/*` convention.
PROMETHEUS_ANNOTATIONS: dict[str, str] = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(contract.QUEUE_METRICS_PORT),
    "prometheus.io/path": contract.METRICS_PATH,
}
_PROBE_HANDLERS = ("httpGet", "tcpSocket", "grpc", "exec")
#: The handlers the queue-proxy can run against the app; an exec or grpc probe stays on the app container.
_PROXIED_PROBE_HANDLERS = ("httpGet", "tcpSocket")
#: The annotations whose values the injected sidecar carries (their problems are reported at injection).
_SIDECAR_ANNOTATIONS = (contract.ANNOTATION_CONTAINER_CONCURRENCY, contract.ANNOTATION_TIMEOUT_SECONDS)
_QUEUE_PROXY_PORTS = {
    contract.QUEUE_SERVING_PORT: SERVING_PORT_NAME,
    contract.QUEUE_METRICS_PORT: METRICS_PORT_NAME,
    contract.QUEUE_ADMIN_PORT: ADMIN_PORT_NAME,
}


class InjectionError(ValueError):
    """A document that cannot be injected at all (no containers, ambiguous app port, port clash)."""


@dataclass(frozen=True)
class Injection:
    """The result of injecting one document: the new document, whether it changed, and warnings to show.

    `errors` are the rejected values of the annotations the sidecar carries (each also among `warnings`), for
    callers that report them apart, as the webhook does with Events."""

    document: dict[str, Any]
    changed: bool
    warnings: tuple[str, ...] = ()
    errors: tuple[ConfigError, ...] = ()


def is_enrolled(document: Mapping[str, Any]) -> bool:
    """True for a Pod, Deployment or Service marked `kapa.dev/enabled: "true"` (label or annotation, on the
    object or, for a Deployment, on its pod template)."""
    if document.get("kind") not in {"Pod", "Deployment", "Service"}:
        return False
    places = [document.get("metadata") or {}]
    if document.get("kind") == "Deployment":
        places.append(((document.get("spec") or {}).get("template") or {}).get("metadata") or {})
    return any(
        str((meta.get(field) or {}).get(contract.ANNOTATION_ENABLED, "")).lower() == "true"
        for meta in places
        for field in ("labels", "annotations")
    )


def inject_document(document: Mapping[str, Any], image: str = DEFAULT_IMAGE, namespace: str | None = None) -> Injection:
    """Inject the queue-proxy into an enrolled Pod or Deployment; anything else comes back unchanged.

    namespace names the service in warnings when the object does not say (a Pod under admission); the
    sidecar itself learns its namespace from the downward API. Raises InjectionError when the pod spec
    cannot carry a queue-proxy (see the class)."""
    if not is_enrolled(document):
        return Injection(dict(document), changed=False)
    result = copy.deepcopy(dict(document))
    kind = result["kind"]
    if not isinstance(result.get("metadata"), dict):
        result["metadata"] = {}
    metadata = result["metadata"]
    if kind == "Service":
        return _service_through_queue_proxy(result)
    if kind == "Deployment":
        template = result.setdefault("spec", {}).setdefault("template", {})
        pod_metadata = template.setdefault("metadata", {})
        pod_spec = template.setdefault("spec", {})
        # Annotations on the Deployment apply, those on its pod template win (they are what pods carry).
        annotations = {**(metadata.get("annotations") or {}), **(pod_metadata.get("annotations") or {})}
        service = str(metadata.get("name") or "")
    else:
        pod_metadata, pod_spec = metadata, result.setdefault("spec", {})
        annotations = dict(metadata.get("annotations") or {})
        service = _pod_service_name(metadata)
    if not service:
        raise InjectionError(f"{kind} has no name to serve under (metadata.name)")
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise InjectionError(f"{kind} {service}: spec has no containers")
    if any(isinstance(c, dict) and c.get("name") == QUEUE_PROXY_CONTAINER for c in containers):
        return Injection(dict(document), changed=False)

    # The scaler's parser, so the sidecar, the activator and the scaler agree on every value and its bounds.
    key = ServiceKey(str(metadata.get("namespace") or namespace or "default"), service)
    settings, errors = service_config(AutoscalerConfig.default(), ServiceSpec(key, _string_values(annotations)))
    sidecar_errors = tuple(e for e in errors if e.key in _SIDECAR_ANNOTATIONS)
    warnings = [str(e) for e in sidecar_errors]
    concurrency, timeout_s = settings.container_concurrency, settings.timeout_s
    app = _app_container(containers, service)
    user_port = _user_port(app)
    clash = _QUEUE_PROXY_PORTS.keys() & {
        p.get("containerPort") for c in containers for p in (c.get("ports") or []) if isinstance(p, dict)
    }
    if clash:
        raise InjectionError(
            f"{kind} {service}: container port {min(clash)} is reserved for the queue-proxy"
            f" ({', '.join(str(p) for p in sorted(_QUEUE_PROXY_PORTS))})"
        )
    original_probe = app.get("readinessProbe")
    app_probe = _probe_for_queue_proxy(original_probe, app, user_port, key, warnings)
    if isinstance(original_probe, dict) and not any(h in original_probe for h in _PROXIED_PROBE_HANDLERS):
        pass  # Kubernetes must keep running an exec or grpc check: the queue-proxy cannot.
    else:
        app["readinessProbe"] = _through_queue_proxy(original_probe)
    lifecycle = app.setdefault("lifecycle", {})
    if "preStop" in lifecycle:
        warnings.append(
            f"{service}: the app's own preStop hook is kept; without Kapa's ({contract.WAIT_FOR_DRAIN_PATH} on"
            f" port {contract.QUEUE_ADMIN_PORT}) the app may stop before the queue-proxy has drained"
        )
    else:
        lifecycle["preStop"] = {"httpGet": {"path": contract.WAIT_FOR_DRAIN_PATH, "port": contract.QUEUE_ADMIN_PORT}}
    containers.append(_queue_proxy_container(image, user_port, concurrency, timeout_s, service, app_probe))

    grace_s = math.ceil(timeout_s) + contract.DEFAULT_DRAIN_SECONDS
    pod_spec["terminationGracePeriodSeconds"] = max(grace_s, int(pod_spec.get("terminationGracePeriodSeconds") or 0))
    pod_metadata.setdefault("labels", {})[contract.ANNOTATION_ENABLED] = "true"
    pod_annotations = pod_metadata.setdefault("annotations", {})
    for key, value in PROMETHEUS_ANNOTATIONS.items():
        existing = pod_annotations.setdefault(key, value)
        if existing != value:
            warnings.append(
                f"{service}: annotation {key}={existing!r} is kept (it is the app's); Kapa's PodMonitor or raw"
                f" scrape config must scrape the queue-proxy (port {METRICS_PORT_NAME}) instead"
            )
    return Injection(result, changed=True, warnings=tuple(warnings), errors=sidecar_errors)


def _service_through_queue_proxy(service: dict[str, Any]) -> Injection:
    """The Service with its serving port targeting the queue-proxy's named port (idempotent)."""
    name = service["metadata"].get("name") or "?"
    ports = (service.get("spec") or {}).get("ports")
    if not isinstance(ports, list) or not ports or not all(isinstance(p, dict) for p in ports):
        raise InjectionError(f"Service {name}: spec has no ports")
    named = [p for p in ports if p.get("name") == SERVICE_PORT_NAME]
    if not named and len(ports) > 1:
        raise InjectionError(
            f"Service {name}: several ports and none named {SERVICE_PORT_NAME!r}; name the port that serves"
            f" requests {SERVICE_PORT_NAME!r} so Kapa knows which one to send through the queue-proxy"
        )
    port = named[0] if named else ports[0]
    if port.get("targetPort") == SERVING_PORT_NAME:
        return Injection(service, changed=False)
    port["targetPort"] = SERVING_PORT_NAME
    return Injection(service, changed=True)


def pod_deployment_name(metadata: Mapping[str, Any]) -> str | None:
    """The Deployment a Pod belongs to: its ReplicaSet owner's name less the pod-template-hash suffix (what
    the Deployment controller appends); None for a Pod no Deployment made."""
    pod_hash = (metadata.get("labels") or {}).get("pod-template-hash")
    for owner in metadata.get("ownerReferences") or []:
        name = str(owner.get("name", ""))
        if owner.get("kind") == "ReplicaSet" and pod_hash and name.endswith(f"-{pod_hash}"):
            return name.removesuffix(f"-{pod_hash}")
    return None


def _pod_service_name(metadata: Mapping[str, Any]) -> str:
    """The service a Pod serves under: its Deployment's name, else the Pod's own name."""
    return pod_deployment_name(metadata) or str(metadata.get("name") or "")


def _string_values(annotations: Mapping[str, Any]) -> dict[str, str]:
    # YAML turns unquoted numbers and booleans into non-strings; annotations are strings on the API server.
    return {str(k): ("true" if v is True else "false" if v is False else str(v)) for k, v in annotations.items()}


def _app_container(containers: list[Any], service: str) -> dict[str, Any]:
    """The container that serves requests: the only one declaring ports, else the first (Knative's rule for
    multi-container revisions: exactly one container exposes a port)."""
    if not all(isinstance(c, dict) for c in containers):
        raise InjectionError(f"{service}: every container must be a mapping")
    with_ports = [c for c in containers if c.get("ports")]
    if len(with_ports) > 1:
        names = ", ".join(str(c.get("name")) for c in with_ports)
        raise InjectionError(f"{service}: several containers declare ports ({names}); exactly one may serve")
    return with_ports[0] if with_ports else containers[0]


def app_port(deployment: Mapping[str, Any]) -> int:
    """The port the app of a Deployment's pods serves on: the one the queue-proxy forwards to."""
    template_spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = [c for c in template_spec.get("containers") or [] if c.get("name") != QUEUE_PROXY_CONTAINER]
    if not containers:
        raise InjectionError(f"{(deployment.get('metadata') or {}).get('name')}: no app container")
    return _user_port(_app_container(containers, str((deployment.get("metadata") or {}).get("name"))))


def _user_port(app: Mapping[str, Any]) -> int:
    ports = app.get("ports") or []
    if not ports:
        return contract.USER_PORT
    port = ports[0].get("containerPort") if isinstance(ports[0], dict) else None
    if not isinstance(port, int) or not 0 < port < 65536:
        raise InjectionError(f"container {app.get('name')}: containerPort {port!r} is not a port number")
    return port


def _probe_for_queue_proxy(
    probe: Any, app: Mapping[str, Any], user_port: int, key: ServiceKey, warnings: list[str]
) -> dict[str, Any]:
    """The app's readiness probe for the queue-proxy to run (SERVING_READINESS_PROBE), as Knative passes it:
    the whole probe, timings included, with named ports made numeric (the queue-proxy has no pod spec to look
    names up in). A TCP check on the app's port stands in when the app has no probe (as in Knative) or one
    the queue-proxy cannot run (exec, grpc, HTTPS), the latter with a warning."""
    if not isinstance(probe, dict) or not any(h in probe for h in _PROBE_HANDLERS):
        return {"tcpSocket": {"port": user_port}}
    timings = {k: v for k, v in probe.items() if k not in _PROBE_HANDLERS}
    handler_name = next((h for h in _PROXIED_PROBE_HANDLERS if h in probe), None)
    if handler_name is None:
        warnings.append(
            f"{key}: the readiness probe of container {app.get('name')} is neither httpGet nor tcpSocket;"
            f" it stays on the app and the queue-proxy checks TCP port {user_port}"
        )
        return {"tcpSocket": {"port": user_port}, **timings}
    handler = dict(probe[handler_name] or {})
    port = handler.get("port", user_port)
    if isinstance(port, str):
        named = {p.get("name"): p.get("containerPort") for p in app.get("ports") or [] if isinstance(p, dict)}
        if port in named:
            port = named[port]
        elif port.isdigit():
            port = int(port)
        else:
            raise InjectionError(f"container {app.get('name')}: readiness probe names unknown port {port!r}")
    handler["port"] = port
    if handler_name == "httpGet" and str(handler.get("scheme", "HTTP")).upper() != "HTTP":
        warnings.append(
            f"{key}: the readiness probe of container {app.get('name')} uses {handler['scheme']};"
            f" the queue-proxy probes plain HTTP only, so it checks TCP port {port}"
        )
        return {"tcpSocket": {"port": port}, **timings}
    return {handler_name: handler, **timings}


def _through_queue_proxy(probe: Any) -> dict[str, Any]:
    """The app's probe with its handler replaced by the queue-proxy's readiness; timings are kept."""
    timings = {k: v for k, v in (probe or {}).items() if k not in _PROBE_HANDLERS} if isinstance(probe, dict) else {}
    return {"httpGet": {"path": contract.READY_PATH, "port": contract.QUEUE_ADMIN_PORT}, **timings}


def _queue_proxy_container(
    image: str, user_port: int, concurrency: int, timeout_s: float, service: str, app_probe: Mapping[str, Any]
) -> dict[str, Any]:
    env = [
        {"name": contract.ENV_QUEUE_SERVING_PORT, "value": str(contract.QUEUE_SERVING_PORT)},
        {"name": contract.ENV_USER_PORT, "value": str(user_port)},
        {"name": contract.ENV_CONTAINER_CONCURRENCY, "value": str(concurrency)},
        {"name": contract.ENV_REVISION_TIMEOUT_SECONDS, "value": f"{timeout_s:g}"},
        {"name": contract.ENV_SERVING_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": contract.ENV_SERVING_SERVICE, "value": service},
        {"name": contract.ENV_SERVING_READINESS_PROBE, "value": json.dumps(app_probe, separators=(",", ":"))},
        {"name": contract.ENV_METRICS_PORT, "value": str(contract.QUEUE_METRICS_PORT)},
        {"name": contract.ENV_ADMIN_PORT, "value": str(contract.QUEUE_ADMIN_PORT)},
    ]
    admin_get = {"path": contract.READY_PATH, "port": contract.QUEUE_ADMIN_PORT}
    return {
        "name": QUEUE_PROXY_CONTAINER,
        "image": image,
        "command": ["kapa", "queue-proxy"],
        "ports": [{"name": name, "containerPort": port} for port, name in _QUEUE_PROXY_PORTS.items()],
        "env": env,
        # The queue-proxy probes the app every 50 ms until first ready; Kubernetes asks it every second.
        "readinessProbe": {"httpGet": admin_get, "periodSeconds": 1, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": {"path": contract.LIVE_PATH, "port": contract.QUEUE_ADMIN_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": {"requests": dict(QUEUE_PROXY_REQUESTS)},
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


# --- `kapa inject` ----------------------------------------------------------------------------------------

#: A line that starts a new YAML document. Only a column-0 `---` can, so block scalars are safe.
_DOCUMENT_START = re.compile(r"^---(?=\s|$)", re.MULTILINE)


def inject_stream(text: str, image: str = DEFAULT_IMAGE, scaler_address: str | None = None) -> tuple[str, list[str]]:
    """Inject every enrolled document of a multi-document YAML stream.

    Documents that are not changed come out byte for byte as they went in (comments and all); injected ones
    are re-serialised. With scaler_address (the scaler's gRPC HOST:PORT), each enrolled Deployment is
    followed by its KEDA ScaledObject (kapa.kube.scaledobject), for GitOps repositories that hold those too.
    Returns the new stream and the warnings. Raises yaml.YAMLError or InjectionError with the document's
    position in the message."""
    starts = [m.start() for m in _DOCUMENT_START.finditer(text)]
    bounds = ([0] if not starts or starts[0] != 0 else []) + starts + [len(text)]
    out: list[str] = []
    warnings: list[str] = []
    for index, (begin, end) in enumerate(zip(bounds, bounds[1:]), start=1):
        chunk = text[begin:end]
        body = _DOCUMENT_START.sub("", chunk, count=1) if chunk.startswith("---") else chunk
        try:
            document = yaml.safe_load(body)
        except yaml.YAMLError as error:
            raise yaml.YAMLError(f"document {index}: {error}") from error
        if not isinstance(document, dict):
            if document is not None:
                raise InjectionError(f"document {index}: expected a Kubernetes object (a mapping)")
            out.append(chunk)
            continue
        try:
            injection = inject_document(document, image)
        except InjectionError as error:
            raise InjectionError(f"document {index}: {error}") from error
        warnings += injection.warnings
        if injection.changed:
            prefix = "---\n" if chunk.startswith("---") else ""
            out.append(prefix + yaml.safe_dump(injection.document, sort_keys=False, default_flow_style=False))
        else:
            out.append(chunk)
        if scaler_address is not None and document.get("kind") == "Deployment" and is_enrolled(document):
            from kapa.kube.scaledobject import scaled_object

            scaled = scaled_object(document, scaler_address)
            warnings += scaled.warnings
            separator = "" if out[-1].endswith("\n") else "\n"
            out.append(separator + "---\n" + yaml.safe_dump(scaled.manifest, sort_keys=False))
    return "".join(out), warnings


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kapa inject",
        description="Add the queue-proxy sidecar to enrolled Deployments and Pods (label or annotation "
        f"{contract.ANNOTATION_ENABLED}: \"true\") in a multi-document YAML manifest; print the result. "
        "With --serve, do the same as a mutating admission webhook.",
    )
    parser.add_argument("-f", "--filename", help="manifest file, or - for stdin")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"the Kapa image (default {DEFAULT_IMAGE})")
    parser.add_argument(
        "--scaled-objects", metavar="SCALER_HOST:PORT",
        help="also emit a KEDA ScaledObject after each enrolled Deployment, its trigger pointing at this scaler",
    )
    parser.add_argument("--serve", action="store_true", help="serve the admission webhook instead")
    parser.add_argument("--host", default="0.0.0.0", help="webhook: address to bind")
    parser.add_argument("--port", type=int, default=8443, help="webhook: port (default 8443)")
    parser.add_argument("--tls-cert", type=Path, help="webhook: PEM certificate (with --tls-key; else plain HTTP)")
    parser.add_argument("--tls-key", type=Path, help="webhook: PEM private key")
    parser.add_argument(
        "--kubeconfig", type=Path,
        help="webhook: kubeconfig for recording Events about bad annotations (default: the pod's ServiceAccount)",
    )
    args = parser.parse_args(list(argv))
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.serve:
        from kapa.core import log as kapa_log
        from kapa.kube.webhook import serve

        kapa_log.configure()
        return serve(args.host, args.port, args.tls_cert, args.tls_key, args.image, args.kubeconfig)
    if args.filename is None:
        parser.error("-f/--filename is required (or --serve)")
    try:
        text = sys.stdin.read() if args.filename == "-" else open(args.filename, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as error:
        print(f"kapa inject: cannot read {args.filename}: {error}", file=sys.stderr)
        return 2
    try:
        output, warnings = inject_stream(text, args.image, args.scaled_objects)
    except (yaml.YAMLError, InjectionError) as error:
        print(f"kapa inject: {args.filename}: {error}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"kapa inject: warning: {warning}", file=sys.stderr)
    sys.stdout.write(output)
    return 0
