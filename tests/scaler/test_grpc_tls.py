"""The external scaler's gRPC port over mTLS, as KEDA's TriggerAuthentication (caCert, tlsClientCert) uses it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from scaler.proto import externalscaler_pb2 as pb
from scaler.proto import externalscaler_pb2_grpc as pb_grpc
from tests.support import KAPA, free_port, running, wait_for_http, wait_for_port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _signed(name: str, subject: str, work: Path, extensions: str | None = None) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=work)  # fmt: skip
    extra: list[str] = []
    if extensions:
        (work / f"{name}.ext").write_text(extensions)
        extra = ["-extfile", f"{name}.ext"]
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", *extra, cwd=work)  # fmt: skip


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    work = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=kapa-test-ca", cwd=work)  # fmt: skip
    _signed("server", "/CN=localhost", work, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _signed("client", "/CN=keda-operator", work)
    return work


@pytest.fixture(scope="module")
def mtls_scaler(certificates: Path) -> Iterator[str]:
    services = certificates / "services.yaml"
    services.write_text(yaml.safe_dump({"services": [{"name": "hello"}]}))
    http_port, grpc_port = free_port(), free_port()
    command = [
        *KAPA, "scaler", "--services", str(services), "--host", "127.0.0.1",
        "--prometheus-url", f"http://127.0.0.1:{free_port()}",  # nobody there: decisions are stale, that's fine
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--tls-cert", str(certificates / "server.pem"), "--tls-key", str(certificates / "server.key"),
        "--tls-client-ca", str(certificates / "ca.pem"),
    ]  # fmt: skip
    with running(command, log=certificates / "scaler.log"):
        wait_for_http(f"http://127.0.0.1:{http_port}/healthz")
        wait_for_port(grpc_port)
        yield f"127.0.0.1:{grpc_port}"


def _credentials(certificates: Path, with_client_cert: bool) -> grpc.ChannelCredentials:
    if not with_client_cert:
        return grpc.ssl_channel_credentials(root_certificates=(certificates / "ca.pem").read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=(certificates / "ca.pem").read_bytes(),
        private_key=(certificates / "client.key").read_bytes(),
        certificate_chain=(certificates / "client.pem").read_bytes(),
    )


async def test_mtls_client_with_certificate_is_served(certificates: Path, mtls_scaler: str) -> None:
    async with grpc.aio.secure_channel(mtls_scaler, _credentials(certificates, True)) as channel:
        spec = await pb_grpc.ExternalScalerStub(channel).GetMetricSpec(
            pb.ScaledObjectRef(name="hello", namespace="default"), timeout=5
        )
    assert spec.metricSpecs[0].targetSizeFloat == 1.0


async def test_mtls_client_without_certificate_is_refused(certificates: Path, mtls_scaler: str) -> None:
    async with grpc.aio.secure_channel(mtls_scaler, _credentials(certificates, False)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await pb_grpc.ExternalScalerStub(channel).GetMetricSpec(
                pb.ScaledObjectRef(name="hello", namespace="default"), timeout=5
            )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
