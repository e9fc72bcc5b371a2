"""KEDA's external scaler (`externalscaler.ExternalScaler`) served from the scaler's decisions.

How KEDA and the HPA arrive at exactly the decided pod count: GetMetricSpec gives each service one metric
with target 1, and GetMetrics answers the desired pod count as its value. KEDA hands that to the HPA as an
External metric of type AverageValue, and the HPA computes ceil(value / target) = desired replicas.
KEDA itself moves 0 <-> 1 from IsActive, which is Knative's "Active" (`Decision.active`: false from the start
of the grace period, while one pod still lingers); KEDA then waits the ScaledObject's cooldownPeriod, the
same grace period, before 1 -> 0. StreamIsActive pushes `true` the moment the activator pokes, so a service
at zero does not wait for KEDA's polling interval.

Every answer comes from the last tick's cached decision: KEDA calls GetMetrics and IsActive at each polling
interval and each HPA sync for every ScaledObject, and none of those calls costs a Prometheus query.
The HPA behaviour the chart must set so nothing re-smooths the decision is in scaler/README.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from kapa.core.log import get_logger
from kapa.core.services import ServiceKey
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
        return pb.IsActiveResponse(result=decision.active)

    async def StreamIsActive(
        self, request: pb.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.IsActiveResponse]:
        key, decision = await self._decision(request, context)
        active = decision.active
        with self.scaler.subscribe([key]) as feed:
            yield pb.IsActiveResponse(result=active)
            async for changes in feed:
                for change in changes:
                    now_active = change.poked or change.decision.active
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
class _Malformed:
    """What a request that does not parse becomes, so the call can be refused instead of crashing."""

    error: str


class RejectMalformedRequests(grpc.aio.ServerInterceptor):
    """A request whose bytes are not the method's message gets INVALID_ARGUMENT and one warning naming the
    method and the peer. Left to gRPC, the parse error escapes as UNKNOWN with a full traceback logged per
    call, which a misconfigured or hostile client turns into a log flood."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method, parse = details.method, handler.request_deserializer

        def tolerant_parse(data: bytes) -> object:
            try:
                return parse(data)
            except DecodeError as error:
                return _Malformed(str(error))

        async def refuse(request: _Malformed, context: grpc.aio.ServicerContext) -> None:
            log.warning("malformed gRPC request refused", method=method, peer=context.peer(), error=request.error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {request.error}")

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def guarded_unary(request: object, context: grpc.aio.ServicerContext) -> object:
                if isinstance(request, _Malformed):
                    await refuse(request, context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                guarded_unary, request_deserializer=tolerant_parse, response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def guarded_stream(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
                if isinstance(request, _Malformed):
                    await refuse(request, context)
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream, request_deserializer=tolerant_parse, response_serializer=handler.response_serializer)
        return handler  # the external scaler has no client-streaming methods


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
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], interceptors=[RejectMalformedRequests()])
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
