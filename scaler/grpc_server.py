"""KEDA's external scaler (`externalscaler.ExternalScaler`) served from the scaler's decisions.

How KEDA and the HPA arrive at exactly the decided pod count: GetMetricSpec gives each service one metric
with target 1, and GetMetrics answers the desired pod count as its value. KEDA hands that to the HPA as an
External metric of type AverageValue, and the HPA computes ceil(value / target) = desired replicas.
KEDA itself moves 0 <-> 1 from IsActive (desired > 0); StreamIsActive pushes `true` the moment the
activator pokes, so a service at zero does not wait for KEDA's polling interval.

Every answer comes from the last tick's cached decision: KEDA calls GetMetrics and IsActive at each polling
interval and each HPA sync for every ScaledObject, and none of those calls costs a Prometheus query.
The HPA behaviour the chart must set so nothing re-smooths the decision is in scaler/README.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from kapa.log import get_logger
from kapa.services import ServiceKey
from scaler.decision import Decision
from scaler.loop import Scaler
from scaler.proto import externalscaler_pb2 as pb
from scaler.proto import externalscaler_pb2_grpc as pb_grpc

log = get_logger(__name__)

#: scalerMetadata keys that name the service when it differs from the ScaledObject's own name/namespace.
METADATA_SERVICE = "service"
METADATA_NAMESPACE = "namespace"
#: AverageValue target: with the metric equal to the desired pods, the HPA wants exactly that many.
TARGET_SIZE = 1


def metric_name(key: ServiceKey) -> str:
    """The external metric's name for a service (KEDA prefixes it with the trigger index, e.g. `s0-`)."""
    return f"kapa-{key.namespace}-{key.name}"


def service_key(ref: pb.ScaledObjectRef) -> ServiceKey:
    """The service a ScaledObjectRef means: its namespace/name, overridden by scalerMetadata."""
    metadata = ref.scalerMetadata
    return ServiceKey(metadata.get(METADATA_NAMESPACE) or ref.namespace, metadata.get(METADATA_SERVICE) or ref.name)


class ExternalScalerService(pb_grpc.ExternalScalerServicer):
    """The four RPCs over a running Scaler."""

    def __init__(self, scaler: Scaler) -> None:
        self.scaler = scaler

    async def _known_key(self, ref: pb.ScaledObjectRef, context: grpc.aio.ServicerContext) -> ServiceKey:
        key = service_key(ref)
        if not self.scaler.has_service(key):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"kapa scaler has no service {key} (ScaledObject {ref.namespace}/{ref.name}); enrol the Deployment "
                f"or set scalerMetadata '{METADATA_NAMESPACE}'/'{METADATA_SERVICE}'",
            )
        return key

    async def _decision(self, ref: pb.ScaledObjectRef, context: grpc.aio.ServicerContext) -> tuple[ServiceKey, Decision]:
        key = await self._known_key(ref, context)
        decision = self.scaler.latest(key)
        if decision is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no decision for {key} yet; the first tick is pending")
        assert decision is not None
        return key, decision

    async def IsActive(self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext) -> pb.IsActiveResponse:
        _, decision = await self._decision(request, context)
        return pb.IsActiveResponse(result=decision.desired_pods > 0)

    async def StreamIsActive(
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.IsActiveResponse]:
        key, decision = await self._decision(request, context)
        active = decision.desired_pods > 0
        with self.scaler.subscribe([key]) as feed:
            yield pb.IsActiveResponse(result=active)
            async for changes in feed:
                for change in changes:
                    now_active = change.poked or change.decision.desired_pods > 0
                    if change.poked or now_active != active:
                        active = now_active
                        yield pb.IsActiveResponse(result=active)

    async def GetMetricSpec(
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> pb.GetMetricSpecResponse:
        key = await self._known_key(request, context)
        spec = pb.MetricSpec(metricName=metric_name(key), targetSize=TARGET_SIZE, targetSizeFloat=float(TARGET_SIZE))
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(self, request: pb.GetMetricsRequest, context: grpc.aio.ServicerContext) -> pb.GetMetricsResponse:
        key, decision = await self._decision(request.scaledObjectRef, context)
        value = pb.MetricValue(
            metricName=request.metricName or metric_name(key),
            metricValue=decision.desired_pods,
            metricValueFloat=float(decision.desired_pods),
        )
        return pb.GetMetricsResponse(metricValues=[value])


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the gRPC port: server certificate and key, and for mTLS the CA that signs KEDA's cert."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())], root_certificates=ca, require_client_auth=ca is not None
        )


async def start_grpc_server(scaler: Scaler, host: str, port: int, tls: TlsFiles | None = None) -> grpc.aio.Server:
    """Start serving the external scaler on host:port (TLS, or mTLS with a client CA, when given)."""
    # gRPC turns SO_REUSEPORT on by default: a second scaler on the same port would bind silently and take
    # half the calls. Off, a taken port is an error at start-up.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_ExternalScalerServicer_to_server(ExternalScalerService(scaler), server)
    address = f"{host}:{port}"
    try:
        if tls is not None:
            server.add_secure_port(address, tls.credentials())
        else:
            server.add_insecure_port(address)
    except RuntimeError as error:  # grpc's way of saying the bind failed
        raise OSError(f"cannot listen for gRPC on {address}: {error}") from error
    await server.start()
    log.info("external scaler listening", address=address, tls=tls is not None, mtls=bool(tls and tls.client_ca))
    return server
