"""The real KEDA (operator and metrics API server, built by scripts/build-keda.sh) on the test control plane.

KEDA runs as two Deployments under the process kubelet, not as host processes, because that is the more
reliable way here:
- names: the adapter dials the operator at `keda-operator.keda.svc.cluster.local:9666`, and a ScaledObject's
  scalerAddress usually names a Service (Kapa's chart: `kapa-scaler.NS.svc:9095`); the kubelet's hosts file
  resolves both inside a pod, while a host process resolves neither without a private mount namespace;
- identity: pods authenticate with their ServiceAccount tokens, so KEDA runs with its own RBAC (copied from
  its module by the build script), as in a real cluster, and a permission it lacks fails here too;
- the APIService reaches the adapter at its pod IP through its Service's EndpointSlice, which the
  EndpointSlice controller keeps current from the pod's readiness; a host process would need a hand-made
  EndpointSlice on the bridge address, and nothing would notice the process dying;
- crashes: the kubelet restarts a failed container with back-off and keeps its log with the pod's.
The price is a few seconds of readiness probes.

Certificates: KEDA's own CA (not the cluster's) signs one certificate for serverAuth and clientAuth, named for
both Services. The operator serves its gRPC metrics service with it (mutual TLS), the adapter dials it and
serves HTTPS with it, and the APIService's caBundle is that CA. Cert rotation stays off (KEDA's default): it
would write a Secret and wait for a kubelet to refresh the mount, which this kubelet does not do.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.k8s.conftest import Cluster, wait_for
from tests.k8s.controlplane import CACHE, CLUSTER_DOMAIN, make_ca, signed_cert

KEDA_VERSION = "2.21.0"
#: Where scripts/build-keda.sh puts KEDA: bin/ (keda-operator, keda-adapter), crds/ and rbac/ (from its module).
KEDA_DIR = CACHE / f"keda-v{KEDA_VERSION}"
BINARIES = ("keda-operator", "keda-adapter")
NAMESPACE = "keda"
#: Names from KEDA's own manifests (config/manager, config/metrics-server): its RBAC binds this
#: ServiceAccount, and the adapter's default operator address names the operator's Service.
SERVICE_ACCOUNT = "keda-operator"
OPERATOR = "keda-operator"
ADAPTER = "keda-metrics-apiserver"
CERT_SECRET = "kedaorg-certs"
CERT_DIR = "/certs"
OPERATOR_GRPC_PORT = 9666
OPERATOR_PROBE_PORT = 8081
ADAPTER_PORT = 6443
API_SERVICE = "v1beta1.external.metrics.k8s.io"
EXTERNAL_METRICS_PATH = "/apis/external.metrics.k8s.io/v1beta1"


def skip_reason() -> str | None:
    """Why KEDA cannot run here, with what to do about it; None when it can."""
    missing = [name for name in BINARIES if not (KEDA_DIR / "bin" / name).is_file()]
    missing += [name for name in ("crds", "rbac") if not (KEDA_DIR / name).is_dir()]
    if missing:
        return (f"KEDA v{KEDA_VERSION} missing in {KEDA_DIR} ({', '.join(missing)}): run "
                "`bash scripts/build-keda.sh` (cold build ~13 min on 2 busy cores)")
    return None


@dataclass(frozen=True)
class Keda:
    """The running KEDA, and where to look when it misbehaves."""

    cluster: Cluster
    namespace: str
    started_in_s: float

    def logs(self) -> str:
        return logs(self.cluster)


def logs(cluster: Cluster, tail_chars: int = 3000) -> str:
    """The last lines of the operator's and the adapter's logs (for a failing assertion's message)."""
    from kubernetes import client

    parts = []
    for pod in client.CoreV1Api(cluster.api).list_namespaced_pod(NAMESPACE).items:
        for container in pod.spec.containers:
            parts.append(f"--- {pod.metadata.name}/{container.name}:\n"
                         + cluster.pod_log(pod, container.name)[-tail_chars:])
    return "\n".join(parts)


def install(cluster: Cluster, root: Path) -> Keda:
    """KEDA's CRDs, RBAC, certificates (under root), operator, adapter and APIService; returns once the
    external metrics API answers through the API server (so the HPA controller can read it)."""
    from kubernetes import client

    started = time.monotonic()
    client.CoreV1Api(cluster.api).create_namespace({"metadata": {"name": NAMESPACE}})
    _install_crds(cluster.api)
    _create_all(cluster.api, _manifests(KEDA_DIR / "rbac"))
    pki = root / "pki"
    _make_certificates(pki)
    _start(cluster.api, pki)
    _wait_until_serving(cluster)
    return Keda(cluster, NAMESPACE, time.monotonic() - started)


def _start(api: Any, pki: Path) -> None:
    """The certificates' Secret, both Deployments with their Services, and the APIService."""
    from kubernetes import client

    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespaced_secret(NAMESPACE, _cert_secret(pki))
    for deployment in (_operator(), _adapter()):
        apps.create_namespaced_deployment(NAMESPACE, deployment)
    for service in (_service(OPERATOR, OPERATOR_GRPC_PORT, OPERATOR_GRPC_PORT), _service(ADAPTER, 443, ADAPTER_PORT)):
        core.create_namespaced_service(NAMESPACE, service)
    client.ApiregistrationV1Api(api).create_api_service(_api_service((pki / "ca.crt").read_text()))


def _wait_until_serving(cluster: Cluster) -> None:
    """Both Deployments available and the external metrics API answering through the API server (front
    proxy, APIService, adapter); on timeout, fail with the pods' states and KEDA's logs."""
    from kubernetes import client

    apps = client.AppsV1Api(cluster.api)
    try:
        for name in (OPERATOR, ADAPTER):
            wait_for(lambda name=name: _available(apps, name), 120, f"KEDA {name} available")
        wait_for(lambda: get_json(cluster.api, EXTERNAL_METRICS_PATH), 120, f"GET {EXTERNAL_METRICS_PATH}")
    except TimeoutError as error:
        raise TimeoutError(f"{error}\n{cluster.diagnose(NAMESPACE)}\n{logs(cluster)}") from error


def get_json(api: Any, path: str) -> Any:
    """GET a raw API path (as `kubectl get --raw`) with the client's credentials; the decoded JSON, or
    ApiException for an error status."""
    method, url, headers, body, post_params = api.param_serialize("GET", path, auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers, body, post_params)
    response.read()
    return api.response_deserialize(response, {"200": "object"}).data


# --- objects -------------------------------------------------------------------------------------------------

def _manifests(directory: Path) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        documents += [document for document in yaml.safe_load_all(path.read_text()) if document]
    return documents


def _create_all(api: Any, objects: list[dict[str, Any]]) -> None:
    from kubernetes import utils

    utils.create_from_yaml(api, yaml_objects=objects)


def _install_crds(api: Any) -> None:
    """Create KEDA's six CRDs (create, not a client-side apply: the ScaledJob CRD's 667 KB would not fit a
    last-applied annotation) and wait until each is Established."""
    from kubernetes import client

    extensions = client.ApiextensionsV1Api(api)
    crds = _manifests(KEDA_DIR / "crds")
    for crd in crds:
        # The response is not read: the client's models would parse a 667 KB schema for nothing.
        extensions.create_custom_resource_definition(crd, _preload_content=False)
    for crd in crds:
        name = crd["metadata"]["name"]
        wait_for(lambda name=name: _established(api, name), 60, f"CRD {name} Established")


def _established(api: Any, name: str) -> bool:
    crd = get_json(api, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    conditions = crd.get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _available(apps: Any, name: str) -> bool:
    return (apps.read_namespaced_deployment_status(name, NAMESPACE).status.available_replicas or 0) >= 1


def _make_certificates(pki: Path) -> None:
    """ca.crt, tls.crt and tls.key as KEDA reads them from --cert-dir, named for both Services."""
    names = [f"{service}{suffix}" for service in (OPERATOR, ADAPTER)
             for suffix in ("", f".{NAMESPACE}", f".{NAMESPACE}.svc", f".{NAMESPACE}.svc.{CLUSTER_DOMAIN}")]
    alt = ",".join([f"DNS:{name}" for name in [*names, "localhost"]] + ["IP:127.0.0.1"])
    make_ca(pki, "/CN=kapa-test-keda-ca")
    signed_cert(pki, "tls", "/CN=keda", f"subjectAltName={alt}\nextendedKeyUsage=serverAuth,clientAuth\n"
                                        "keyUsage=digitalSignature\n")


def _cert_secret(pki: Path) -> dict[str, Any]:
    files = ("ca.crt", "tls.crt", "tls.key")
    return {"metadata": {"name": CERT_SECRET}, "stringData": {name: (pki / name).read_text() for name in files}}


def _pod_spec(name: str, binary: str, args: list[str], probe: dict[str, Any]) -> dict[str, Any]:
    """One container running the cached `binary` (the kubelet runs commands as local processes; the image
    is only a label), with KEDA's certificates at CERT_DIR and the environment KEDA's manifests give it."""
    return {
        "serviceAccountName": SERVICE_ACCOUNT,
        "terminationGracePeriodSeconds": 5,
        "volumes": [{"name": "certificates", "secret": {"secretName": CERT_SECRET}}],
        "containers": [{
            "name": name, "image": f"ghcr.io/kedacore/{name}:{KEDA_VERSION}",
            "command": [str(KEDA_DIR / "bin" / binary)], "args": args,
            # KEDA exits unless WATCH_NAMESPACE is set (empty: all namespaces). The API server drops an empty
            # `value` and the process kubelet then sets nothing, so this is KEDA's other spelling of "all".
            "env": [{"name": "WATCH_NAMESPACE", "value": '""'},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
            "volumeMounts": [{"name": "certificates", "mountPath": CERT_DIR, "readOnly": True}],
            "readinessProbe": {**probe, "periodSeconds": 1},
        }],
    }


def _deployment(name: str, binary: str, args: list[str], probe: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": _pod_spec(name, binary, args, probe)}},
    }


def _operator() -> dict[str, Any]:
    # No --leader-elect: there is one replica, and the lease would only delay the start.
    args = ["--zap-log-level=info", "--zap-encoder=console", f"--cert-dir={CERT_DIR}",
            f"--metrics-service-bind-address=:{OPERATOR_GRPC_PORT}",
            f"--health-probe-bind-address=:{OPERATOR_PROBE_PORT}"]
    return _deployment(OPERATOR, "keda-operator", args, {"httpGet": {"path": "/readyz", "port": OPERATOR_PROBE_PORT}})


def _adapter() -> dict[str, Any]:
    # The operator's address is the adapter's default, keda-operator.NAMESPACE.svc.cluster.local:9666.
    args = [f"--secure-port={ADAPTER_PORT}", f"--cert-dir={CERT_DIR}", f"--client-ca-file={CERT_DIR}/ca.crt",
            f"--tls-cert-file={CERT_DIR}/tls.crt", f"--tls-private-key-file={CERT_DIR}/tls.key",
            "--zap-log-level=info"]
    probe = {"httpGet": {"path": "/readyz", "port": ADAPTER_PORT, "scheme": "HTTPS"}}
    return _deployment(ADAPTER, "keda-adapter", args, probe)


def _service(name: str, port: int, target_port: int) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "main", "port": port, "targetPort": target_port}]}}


def _api_service(ca_pem: str) -> dict[str, Any]:
    """KEDA's APIService (config/metrics-server/api_service.yaml) with the CA that signed the adapter's
    certificate; the API server calls the Service's endpoint (--enable-aggregator-routing)."""
    group, version = "external.metrics.k8s.io", "v1beta1"
    return {
        "metadata": {"name": API_SERVICE},
        "spec": {"service": {"name": ADAPTER, "namespace": NAMESPACE, "port": 443}, "group": group,
                 "version": version, "caBundle": base64.b64encode(ca_pem.encode()).decode(),
                 "groupPriorityMinimum": 100, "versionPriority": 100},
    }
