"""Hand every enrolled workload back to plain Kubernetes: what `helm uninstall` runs before it deletes Kapa.

Without it, uninstalling Kapa would break the apps it scaled: a Deployment Kapa had taken to zero would stay
at zero with no activator left to wake it; KEDA would keep polling a ScaledObject whose scaler is gone (and,
reading that as idle after its cooldown, take a loaded service to zero); and a Service Kapa pointed at the
queue-proxy's named port would lose every endpoint once its pods are re-created without the sidecar (the
webhook that injects it goes with Kapa). So, in this order:

1. the scaler is scaled to zero and waited for, so that it cannot undo what follows (with `actuator:
   direct` it would take an idle Deployment straight back to zero);
2. Kapa's ScaledObjects and HPAs (labelled `app.kubernetes.io/managed-by: kapa`) are deleted: KEDA removes
   its own HPA with the ScaledObject, and each Deployment keeps the replicas it has;
3. each enrolled Deployment at zero is scaled to its min-scale, at least 1 (read as the scaler reads it);
4. each Service whose serving port targets the queue-proxy (by its port name or number) is pointed back at the app's container port
   (the queue-proxy forwards to that port, so a pod that still has the sidecar serves the same).

Pods keep their sidecars until they are next re-created; the queue-proxy serves without a scaler. Events
Kapa recorded expire with the API server's event TTL. Every step is idempotent: the hook can run again.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kapa.core import contract
from kapa.core.log import configure, get_logger
from kapa.core.settings import AutoscalerConfig, service_config
from kapa.kube.client import api_client
from kapa.kube.deployments import deployment_spec
from kapa.kube.inject import SERVING_PORT_NAME, InjectionError, app_port, is_enrolled
from kapa.kube.scaledobject import MANAGED_BY_LABELS

log = get_logger("kapa.detach")
#: How long to wait for the scaler's pods to be gone before handing the workloads back anyway.
SCALER_GONE_TIMEOUT_S = 60.0
_MANAGED_BY = ",".join(f"{key}={value}" for key, value in MANAGED_BY_LABELS.items())
#: (API group, version, plural) of the objects the scaler keeps per enrolled Deployment.
_KEPT_OBJECTS = (("keda.sh", "v1alpha1", "scaledobjects"), ("autoscaling", "v2", "horizontalpodautoscalers"))


def detach(api: Any, scaler_namespace: str, scaler_deployment: str, namespaces: Sequence[str] = ()) -> list[str]:
    """Run the four steps over `namespaces` (all when empty); returns one line per change made."""
    from kubernetes import client

    apps, core, custom = client.AppsV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api)
    changes = _stop_scaler(apps, core, scaler_namespace, scaler_deployment)
    for group, version, plural in _KEPT_OBJECTS:
        for item in _each(namespaces, lambda ns: _list_custom(custom, group, version, plural, ns)):
            metadata = item["metadata"]
            _ignore_missing(lambda: custom.delete_namespaced_custom_object(
                group, version, metadata["namespace"], plural, metadata["name"]))
            changes.append(f"deleted {plural} {metadata['namespace']}/{metadata['name']}")
    enrolled = [d for d in _each(namespaces, lambda ns: _list_deployments(apps, ns)) if is_enrolled(d)]
    config = AutoscalerConfig.default()
    for deployment in enrolled:
        metadata = deployment["metadata"]
        where = f"{metadata['namespace']}/{metadata['name']}"
        if (deployment.get("spec") or {}).get("replicas") == 0:
            settings, _ = service_config(config, deployment_spec(deployment))
            replicas = max(1, settings.min_scale)
            apps.patch_namespaced_deployment_scale(metadata["name"], metadata["namespace"],
                                                   {"spec": {"replicas": replicas}})  # fmt: skip
            changes.append(f"scaled deployment {where} from 0 to {replicas}")
        changes += _restore_service(core, deployment)
    for change in changes:
        log.info("handed back", change=change)
    return changes


def _stop_scaler(apps: Any, core: Any, namespace: str, name: str) -> list[str]:
    from kubernetes.client.exceptions import ApiException

    try:
        deployment = apps.read_namespaced_deployment(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return []
        raise
    selector = ",".join(f"{key}={value}" for key, value in (deployment.spec.selector.match_labels or {}).items())
    changes = []
    if deployment.spec.replicas != 0:
        apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": 0}})
        changes.append(f"scaled deployment {namespace}/{name} (the scaler) to 0")
    deadline = time.monotonic() + SCALER_GONE_TIMEOUT_S
    while core.list_namespaced_pod(namespace, label_selector=selector).items:
        if time.monotonic() > deadline:
            log.warning("the scaler's pods are still there; handing the workloads back anyway", scaler=name,
                        waited_s=SCALER_GONE_TIMEOUT_S)  # fmt: skip
            break
        time.sleep(1.0)
    return changes


def _restore_service(core: Any, deployment: Mapping[str, Any]) -> list[str]:
    """The Service named like the Deployment, its port that targets the queue-proxy pointed at the app."""
    from kubernetes.client.exceptions import ApiException

    metadata = deployment["metadata"]
    try:
        service = core.read_namespaced_service(metadata["name"], metadata["namespace"]).to_dict()
    except ApiException as error:
        if error.status == 404:
            return []
        raise
    ports = (service.get("spec") or {}).get("ports") or []
    if not any(_targets_queue_proxy(port) for port in ports):
        return []
    try:
        port_number = app_port(deployment)
    except InjectionError as error:
        log.warning("service left pointing at the queue-proxy", service=f"{metadata['namespace']}/{metadata['name']}",
                    error=str(error))  # fmt: skip
        return []
    patched = [{"name": p.get("name"), "port": p["port"], "protocol": p.get("protocol") or "TCP",
                "targetPort": port_number if _targets_queue_proxy(p) else p.get("target_port")}
               for p in ports]  # fmt: skip
    # A strategic merge patch merges ports by their port number: the whole list, each with its new target.
    core.patch_namespaced_service(metadata["name"], metadata["namespace"], {"spec": {"ports": patched}})
    return [f"pointed service {metadata['namespace']}/{metadata['name']} back at the app's port {port_number}"]


def _targets_queue_proxy(port: Mapping[str, Any]) -> bool:
    """A Service port sent through the queue-proxy: by the name injection gives it, or by its number."""
    return port.get("target_port") in (SERVING_PORT_NAME, contract.QUEUE_SERVING_PORT, str(contract.QUEUE_SERVING_PORT))


def _each(namespaces: Sequence[str], list_in: Any) -> Iterator[dict[str, Any]]:
    for namespace in namespaces or (None,):
        yield from list_in(namespace)


def _list_custom(custom: Any, group: str, version: str, plural: str, namespace: str | None) -> list[dict[str, Any]]:
    from kubernetes.client.exceptions import ApiException

    try:
        if namespace is None:
            found = custom.list_cluster_custom_object(group, version, plural, label_selector=_MANAGED_BY)
        else:
            found = custom.list_namespaced_custom_object(group, version, namespace, plural, label_selector=_MANAGED_BY)
    except ApiException as error:
        if error.status == 404:  # the kind is not installed (no KEDA): nothing of it to delete
            return []
        raise
    return list(found.get("items") or [])


def _list_deployments(apps: Any, namespace: str | None) -> list[dict[str, Any]]:
    api = apps.api_client
    found = (apps.list_deployment_for_all_namespaces() if namespace is None
             else apps.list_namespaced_deployment(namespace))  # fmt: skip
    # A list's items carry no kind: give them theirs, as a watch event's objects have it.
    return [{**api.sanitize_for_serialization(item), "apiVersion": "apps/v1", "kind": "Deployment"} for item in found.items]


def _ignore_missing(call: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as error:
        if error.status != 404:
            raise


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kapa detach",
        description="Hand every enrolled workload back to plain Kubernetes (the chart's pre-delete hook runs "
        "this): stop the scaler, delete Kapa's ScaledObjects and HPAs, scale Deployments at zero to their "
        "min-scale (at least 1), point Services back at the app's port.",
    )
    parser.add_argument("--scaler", required=True, metavar="NAMESPACE/NAME", help="the scaler's Deployment")
    parser.add_argument("--namespace", action="append", default=[], dest="namespaces",
                        help="an enrolled namespace (repeat; default: all namespaces)")  # fmt: skip
    parser.add_argument("--kubeconfig", default=None, help="default: the pod's ServiceAccount, else ~/.kube/config")
    args = parser.parse_args(argv)
    namespace, _, name = args.scaler.partition("/")
    if not namespace or not name:
        parser.error(f"--scaler: expected NAMESPACE/NAME, got {args.scaler!r}")
    configure()
    changes = detach(api_client(args.kubeconfig), namespace, name, args.namespaces)
    print(f"kapa detach: {len(changes)} change(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
