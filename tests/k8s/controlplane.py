"""A real Kubernetes control plane for the end-to-end tests: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, built by scripts/build-k8s.sh, started as processes with certificates made here.

etcd and the controllers' serving ports stay on loopback. The API server listens on the pod bridge's
gateway address (network.GATEWAY_IP) and advertises it, because pods (in their own network namespaces) must
reach it and the `kubernetes` Service's endpoints may not be loopback. Every client, the test included,
authenticates with one admin client certificate (group system:masters); pods use their ServiceAccount
tokens, so the chart's RBAC is exercised for real.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.k8s import network, session
from tests.support import free_port, stop_process

K8S_VERSION = "v1.36.3"
#: The build scripts' cache root (KAPA_CACHE overrides it, as in scripts/build-*.sh).
CACHE = Path(os.environ.get("KAPA_CACHE", Path.home() / ".cache" / "kapa"))
#: Where scripts/build-k8s.sh puts the binaries.
BIN_DIR = CACHE / f"k8s-{K8S_VERSION}" / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "helm", "prometheus")
#: The first address of network.SERVICE_CIDR, which the API server gives the `kubernetes` Service.
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"
#: The front proxy's CA and client certificate (the API server's identity towards aggregated API servers),
#: in this subdirectory of the PKI; the client certificate's CN, the one name aggregated servers accept.
FRONT_PROXY_DIR = "front-proxy"
FRONT_PROXY_CLIENT = "front-proxy-client"
#: kube-controller-manager's default --horizontal-pod-autoscaler-sync-period is 15 s; tests use a faster one.
DEFAULT_HPA_SYNC_PERIOD_S = 5.0


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if not os.access(BIN_DIR / name, os.X_OK)]


def skip_reason() -> str | None:
    """Why the Kubernetes tests cannot run here, with what to do about it; None when they can."""
    if os.geteuid() != 0:
        return "the Kubernetes end-to-end tests need root (network namespaces for pods)"
    for tool in ("ip", "nsenter", "unshare", "mount", "openssl"):
        if shutil.which(tool) is None:
            return f"the Kubernetes end-to-end tests need `{tool}` (util-linux, iproute2, openssl)"
    missing = missing_binaries()
    if missing:
        how = "install Go, then run `bash scripts/build-k8s.sh`" if shutil.which("go") is None else (
            "run `bash scripts/build-k8s.sh`")
        return (f"Kubernetes binaries missing in {BIN_DIR} ({', '.join(missing)}): {how} "
                "(cold build ~25 min on 2 busy cores)")
    return None


@dataclass(frozen=True)
class ControlPlane:
    """How to reach the running control plane."""

    dir: Path
    server: str
    kubeconfig: Path
    ca_file: Path
    client_cert: Path
    client_key: Path

    @property
    def host(self) -> str:
        return network.GATEWAY_IP

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def api_client(self):  # -> kubernetes.client.ApiClient
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)

    def env(self) -> dict[str, str]:
        """Environment for helm and other clients: this cluster's kubeconfig only."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.dir / "home")}


# --- certificates (openssl CLI: no Python crypto dependency) ------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ec_key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path), cwd=path.parent)


def make_ca(pki: Path, subject: str) -> None:
    """A self-signed CA as pki/ca.crt + pki/ca.key, which `signed_cert` signs with."""
    pki.mkdir(parents=True, exist_ok=True)
    _ec_key(pki / "ca.key")
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", subject, "-days", "2", "-out", "ca.crt", cwd=pki)


def signed_cert(pki: Path, name: str, subject: str, extensions: str) -> None:
    """pki/NAME.crt + pki/NAME.key for `subject`, signed by pki's CA; `extensions` is an openssl extfile."""
    _ec_key(pki / f"{name}.key")
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    (pki / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, an admin client certificate, the ServiceAccount key, and
    the front proxy's own CA and client certificate (FRONT_PROXY_DIR)."""
    make_ca(pki, "/CN=kapa-test-ca")
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
             "localhost"]
    alt = ",".join([f"DNS:{n}" for n in names] + [f"IP:{ip}" for ip in ("127.0.0.1", network.GATEWAY_IP,
                                                                         KUBERNETES_SERVICE_IP)])
    signed_cert(pki, "apiserver", "/CN=kube-apiserver",
                f"subjectAltName={alt}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n")
    signed_cert(pki, "admin", "/O=system:masters/CN=kapa-test-admin",
                "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n")
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    # A CA of its own, as Kubernetes recommends: an aggregated API server trusts any certificate this CA signs
    # to assert a user in request headers, so it must not sign ordinary client certificates.
    make_ca(pki / FRONT_PROXY_DIR, "/CN=kapa-test-front-proxy-ca")
    signed_cert(pki / FRONT_PROXY_DIR, FRONT_PROXY_CLIENT, f"/CN={FRONT_PROXY_CLIENT}",
                "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n")


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: kapa-test
  cluster: {{server: "{server}", certificate-authority: "{pki / 'ca.crt'}"}}
users:
- name: admin
  user: {{client-certificate: "{pki / 'admin.crt'}", client-key: "{pki / 'admin.key'}"}}
contexts:
- name: kapa-test
  context: {{cluster: kapa-test, user: admin}}
current-context: kapa-test
"""
    )


# --- processes -------------------------------------------------------------------------------------------

def _start(stack: ExitStack, name: str, args: list[str], logs: Path) -> subprocess.Popen[bytes]:
    """Start a process in its own session, logging to logs/NAME.log; the stack stops it (group) on exit."""
    log = stack.enter_context(open(logs / f"{name}.log", "wb"))
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    session.record(process.pid)
    stack.callback(stop_process, process, 10.0)
    return process


def _wait_ready(plane: ControlPlane, process: subprocess.Popen[bytes], logs: Path, timeout_s: float) -> None:
    context = plane.ssl_context()
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (logs / "kube-apiserver.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"kube-apiserver exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{plane.server}/readyz", context=context, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError as error:
            last = error
        time.sleep(0.25)
    raise TimeoutError(f"kube-apiserver not ready after {timeout_s}s (last: {last}); see {logs}")


def _front_proxy_flags(pki: Path) -> list[str]:
    """The API server's front-proxy (requestheader) configuration, which aggregated APIs need.

    When the API server proxies a request to an aggregated API (KEDA's external.metrics.k8s.io), it
    presents the front-proxy client certificate and names the caller in X-Remote-User/-Group/-Extra-*
    headers. The aggregated server learns which CA and names to trust for that from the
    kube-system/extension-apiserver-authentication ConfigMap, which the API server fills from these flags;
    without them it sees every proxied caller, the HPA controller included, as system:anonymous."""
    front_proxy = pki / FRONT_PROXY_DIR
    return [
        f"--requestheader-client-ca-file={front_proxy / 'ca.crt'}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={front_proxy / f'{FRONT_PROXY_CLIENT}.crt'}",
        f"--proxy-client-key-file={front_proxy / f'{FRONT_PROXY_CLIENT}.key'}",
    ]


@contextmanager
def control_plane(
    root: Path, startup_timeout_s: float = 120.0, hpa_sync_period_s: float = DEFAULT_HPA_SYNC_PERIOD_S
) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, torn down (in reverse) on exit.

    Expects the pod bridge (network.create_bridge) to exist: the API server binds its address.
    hpa_sync_period_s is how often the HPA controller reads metrics (and so how fast replicas above 1 follow
    an external scaler); a benchmark can ask for the production default of 15 s.
    """
    pki = root / "pki"
    logs = root / "logs"
    logs.mkdir(parents=True)
    (root / "home").mkdir()
    make_pki(pki)
    api_port = free_port()
    server = f"https://{network.GATEWAY_IP}:{api_port}"
    kubeconfig = root / "kubeconfig"
    write_kubeconfig(kubeconfig, server, pki)
    plane = ControlPlane(root, server, kubeconfig, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")

    with ExitStack() as stack:
        etcd_client, etcd_peer = free_port(), free_port()
        _start(stack, "etcd", [
            str(BIN_DIR / "etcd"), "--name=kapa-test", f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=kapa-test=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--quota-backend-bytes=1073741824", "--log-level=warn",
        ], logs)
        apiserver = _start(stack, "kube-apiserver", [
            str(BIN_DIR / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            f"--bind-address={network.GATEWAY_IP}", f"--advertise-address={network.GATEWAY_IP}",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={network.SERVICE_CIDR}",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # Webhooks and aggregated APIs are called at their Service's endpoints (pod IPs), not the
            # ClusterIP, which nothing routes here (no kube-proxy).
            "--enable-aggregator-routing=true",
            *_front_proxy_flags(pki),
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ], logs)
        _wait_ready(plane, apiserver, logs, startup_timeout_s)
        _start(stack, "kube-controller-manager", [
            str(BIN_DIR / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false", "--controllers=*",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={network.SERVICE_CIDR}",
            f"--horizontal-pod-autoscaler-sync-period={hpa_sync_period_s:g}s",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            "--v=1",
        ], logs)
        _start(stack, "kube-scheduler", [
            str(BIN_DIR / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            "--v=1",
        ], logs)
        yield plane
