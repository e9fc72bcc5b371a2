"""KubernetesEndpointSource against a real kube-apiserver (with etcd), both on loopback.

Only the API server is needed to list and watch EndpointSlices, so no controllers, nodes or pods run: the
test writes the slices itself, as the EndpointSlice controller would. The binaries come from
scripts/build-k8s.sh (tests/k8s); without them the test skips (in CI, a failure: tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kapa.core.endpoints import EndpointsUpdate
from kapa.kube.endpoints import KubernetesEndpointSource, WatchExpired
from kapa.core.services import Endpoint, ServiceKey
from tests.k8s.controlplane import BIN_DIR
from tests.support import free_port, running

HELLO = ServiceKey("default", "hello")
TOKEN = "kapa-endpoints-test-token"


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A kube-apiserver on etcd; yields a kubernetes.client.Configuration for it (admin by bearer token)."""
    missing = [name for name in ("etcd", "kube-apiserver") if not os.access(BIN_DIR / name, os.X_OK)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not built in {BIN_DIR}: run `bash scripts/build-k8s.sh`")
    from kubernetes import client

    root = tmp_path_factory.mktemp("apiserver")
    subprocess.run(["openssl", "genrsa", "-out", str(root / "sa.key"), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(root / "sa.key"), "-pubout", "-out", str(root / "sa.pub")],
                   check=True, capture_output=True)
    (root / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd = [
        str(BIN_DIR / "etcd"), "--name=endpoints-test", f"--data-dir={root / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{etcd_port}", f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=endpoints-test=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync", "--log-level=warn",
    ]
    apiserver = [
        str(BIN_DIR / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1", f"--secure-port={api_port}", f"--cert-dir={root / 'certs'}",
        "--authorization-mode=AlwaysAllow", f"--token-auth-file={root / 'tokens.csv'}",
        "--service-cluster-ip-range=10.96.0.0/24", "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={root / 'sa.pub'}", f"--service-account-signing-key-file={root / 'sa.key'}",
        # Compact etcd every second and serve watches from etcd itself (the watch cache would keep old
        # versions for minutes), so an old resourceVersion really is gone (410) within the test.
        "--etcd-compaction-interval=1s", "--watch-cache=false", "--profiling=false", "--v=0",
    ]
    with running(etcd, log=root / "etcd.log"), running(apiserver, log=root / "apiserver.log"):
        config = client.Configuration()
        config.host = f"https://127.0.0.1:{api_port}"
        config.api_key = {"authorization": TOKEN}
        config.api_key_prefix = {"authorization": "Bearer"}
        _wait_ready(config.host, root / "certs" / "apiserver.crt")
        config.ssl_ca_cert = str(root / "certs" / "apiserver.crt")
        yield config


def _wait_ready(host: str, ca_file: Path, timeout_s: float = 60.0) -> None:
    import ssl

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            context = ssl.create_default_context(cafile=str(ca_file))
            request = urllib.request.Request(host + "/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                if response.read().strip() == b"ok":
                    return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"kube-apiserver at {host} not ready within {timeout_s}s")
        time.sleep(0.5)


def _slice(name: str, endpoints: list[tuple[str, bool, bool]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": HELLO.namespace, "labels": {"kubernetes.io/service-name": HELLO.name}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": ready, "serving": ready, "terminating": terminating}}
            for address, ready, terminating in endpoints
        ],
        "ports": [{"name": "http", "port": 8012, "protocol": "TCP"}, {"name": "metrics", "port": 9091, "protocol": "TCP"}],
    }


async def _next_for(stream: AsyncIterator[EndpointsUpdate], key: ServiceKey) -> EndpointsUpdate:
    while True:
        update = await asyncio.wait_for(anext(stream), 15)
        if update.key == key:
            return update


def _at_8012(*addresses: str) -> frozenset[Endpoint]:
    return frozenset(Endpoint(address, 8012) for address in addresses)


@pytest.mark.timeout(90)
async def test_slices_written_to_the_api_server_reach_the_stream(api_server: Any) -> None:
    from kubernetes import client

    api = client.DiscoveryV1Api(client.ApiClient(api_server))
    source = KubernetesEndpointSource(api_client=client.ApiClient(api_server))
    source.WATCH_TIMEOUT_S = 2  # the server ends each watch after 2 s: changes later prove it resumed
    await source.start()
    stream = source.updates()

    def write(call: str, *args: Any) -> Any:
        return asyncio.to_thread(getattr(api, call), *args)

    try:
        await write("create_namespaced_endpoint_slice", "default", _slice("hello-a", [("10.0.0.1", False, False)]))
        update = await _next_for(stream, HELLO)
        assert update.endpoints == _at_8012("10.0.0.1") and update.ready == frozenset()  # starting, taken

        await asyncio.sleep(3)  # past the watch timeout: the next change arrives on a resumed watch
        await write("replace_namespaced_endpoint_slice", "hello-a", "default",
                    _slice("hello-a", [("10.0.0.1", True, False), ("10.0.0.2", False, True)]))
        update = await _next_for(stream, HELLO)
        assert update.endpoints == _at_8012("10.0.0.1") and update.ready == _at_8012("10.0.0.1")  # terminating left out

        await write("create_namespaced_endpoint_slice", "default", _slice("hello-b", [("10.0.0.3", True, False)]))
        assert (await _next_for(stream, HELLO)).endpoints == _at_8012("10.0.0.1", "10.0.0.3")

        await write("delete_namespaced_endpoint_slice", "hello-a", "default")
        assert (await _next_for(stream, HELLO)).endpoints == _at_8012("10.0.0.3")
        assert source.snapshot()[HELLO].endpoints == _at_8012("10.0.0.3")
    finally:
        await source.close()
        await write("delete_collection_namespaced_endpoint_slice", "default")


@pytest.mark.timeout(90)
async def test_a_compacted_resource_version_is_410_gone(api_server: Any) -> None:
    from kubernetes import client

    api = client.DiscoveryV1Api(client.ApiClient(api_server))
    for index in range(3):
        await asyncio.to_thread(api.create_namespaced_endpoint_slice, "default",
                                _slice(f"churn-{index}", [("10.0.1.1", True, False)]))
    await asyncio.to_thread(api.delete_collection_namespaced_endpoint_slice, "default")
    source = KubernetesEndpointSource(api_client=client.ApiClient(api_server))
    source._loop = asyncio.get_running_loop()
    source.WATCH_TIMEOUT_S = 1  # a watch that is still served ends quickly; then try again
    # The API server compacts etcd every second, to the revision it saw a second before: within a few
    # seconds a watch from revision 2 must be refused.
    with pytest.raises(WatchExpired, match="too old"):
        for _ in range(20):
            await asyncio.to_thread(source._watch, api, "2")
            await asyncio.sleep(0.5)
