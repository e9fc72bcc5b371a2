"""The Aggregated Discovery Service over gRPC: serves a SnapshotCache to every connected Envoy.

One stream per Envoy carries all four resource types, so Envoy sees clusters, endpoints, listener and
routes in the order we send them. Each stream runs two halves on the event loop: a reader that feeds every
request to the stream's book (`cache.StreamBook` for state-of-the-world, `delta.DeltaStreamBook` for
incremental xDS), and a writer that wakes on a request or a cache change and sends whatever responses the
book says are due.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from kapa.core.log import get_logger

from gateway.cache import RequestKind, RequestOutcome, Response, SnapshotCache, StreamBook
from gateway.delta import DeltaResponse, DeltaStreamBook

log = get_logger(__name__)


@dataclass(frozen=True)
class TypeStatus:
    """What one Envoy last accepted and rejected for one resource type (for tests and the admin API)."""

    acked_version: str | None
    rejected_version: str | None
    reject_reason: str
    #: Seconds from the publication of the last ACKed version to its ACK: a decision's way to Envoy.
    ack_delay_s: float | None = None


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """ADS in both variants, state-of-the-world and incremental (delta); the bootstrap picks one."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self._streams: dict[int, tuple[str, StreamBook | DeltaStreamBook]] = {}
        self._ack_delays: dict[tuple[int, str], float] = {}
        self._stream_ids = itertools.count(1)

    def status(self) -> dict[str, dict[str, TypeStatus]]:
        """node id -> type URL -> what that Envoy's live stream has ACKed and rejected.

        Node ids should be unique per Envoy (`--node-id`, or Envoy's `--service-node`); streams that share
        one are told apart as `NODE#STREAM`.
        """
        status: dict[str, dict[str, TypeStatus]] = {}
        for stream_id, (node, stream) in sorted(self._streams.items()):
            status[node if node not in status else f"{node}#{stream_id}"] = {
                type_url: TypeStatus(book.acked_version, book.rejected_version, book.reject_reason,
                                     self._ack_delays.get((stream_id, type_url)))
                for type_url, book in stream.types.items()
            }
        return status

    async def StreamAggregatedResources(  # noqa: N802 - the name is the gRPC method's
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        book = StreamBook()

        def on_request(request: discovery_pb2.DiscoveryRequest, error: str | None) -> RequestOutcome:
            return book.on_request(
                request.type_url, request.version_info, request.response_nonce, request.resource_names, error
            )

        def render(response: Response) -> discovery_pb2.DiscoveryResponse:
            return discovery_pb2.DiscoveryResponse(
                version_info=response.version,
                type_url=response.type_url,
                nonce=response.nonce,
                resources=list(response.resources),
            )

        await self._serve_stream("sotw", book, request_iterator, context, on_request, render)

    async def DeltaAggregatedResources(  # noqa: N802 - the name is the gRPC method's
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        book = DeltaStreamBook()

        def on_request(request: discovery_pb2.DeltaDiscoveryRequest, error: str | None) -> RequestOutcome:
            return book.on_request(
                request.type_url,
                request.resource_names_subscribe,
                request.resource_names_unsubscribe,
                request.initial_resource_versions,
                request.response_nonce,
                error,
            )

        def render(response: DeltaResponse) -> discovery_pb2.DeltaDiscoveryResponse:
            return discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=response.version,
                type_url=response.type_url,
                nonce=response.nonce,
                resources=[
                    discovery_pb2.Resource(name=name, version=version, resource=resource)
                    for name, version, resource in response.resources
                ],
                removed_resources=list(response.removed),
            )

        await self._serve_stream("delta", book, request_iterator, context, on_request, render)

    async def _serve_stream(
        self,
        protocol: str,
        book: StreamBook | DeltaStreamBook,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        on_request: Callable[[Any, str | None], RequestOutcome],
        render: Callable[[Any], Any],
    ) -> None:
        """Both protocols' stream: a reader feeding `book`, a writer sending what it says is due."""
        stream_id = next(self._stream_ids)
        wake = asyncio.Event()
        node = "?"
        self._streams[stream_id] = (node, book)
        self.cache.watch(wake)

        async def read() -> None:
            nonlocal node
            async for request in request_iterator:
                if request.node.id:  # Envoy sends its node only on the first request of a stream
                    node = request.node.id
                    self._streams[stream_id] = (node, book)
                error = request.error_detail.message if request.HasField("error_detail") else None
                outcome = on_request(request, error)
                if outcome.kind is RequestKind.NACK:
                    log.warning(
                        "envoy rejected config",
                        node=node, type=_short(outcome.type_url), rejected_version=outcome.version,
                        version_in_force=outcome.in_force, reason=outcome.detail,
                    )
                elif outcome.kind is not RequestKind.STALE:
                    published = self.cache.published_at(outcome.version) if outcome.kind is RequestKind.ACK else None
                    if published is not None and outcome.version is not None:
                        self._ack_delays[(stream_id, outcome.type_url)] = time.monotonic() - published
                    log.debug(
                        "discovery request", node=node, kind=outcome.kind.value, type=_short(outcome.type_url),
                        version=outcome.version,
                    )
                wake.set()

        reader = asyncio.create_task(read())
        reader.add_done_callback(lambda _: wake.set())
        log.info("ads stream opened", stream=stream_id, protocol=protocol, peer=context.peer())
        try:
            while not reader.done():
                await wake.wait()
                wake.clear()
                for response in book.due_responses(self.cache.snapshot(), self.cache.order):
                    await context.write(render(response))
                    log.debug(
                        "discovery response", node=node, type=_short(response.type_url),
                        version=response.version, nonce=response.nonce, resources=len(response.resources),
                    )
            if not reader.cancelled() and reader.exception() is not None:
                log.info("ads stream read failed", stream=stream_id, node=node, error=repr(reader.exception()))
        finally:
            reader.cancel()
            self.cache.unwatch(wake)
            self._streams.pop(stream_id, None)
            for key in [key for key in self._ack_delays if key[0] == stream_id]:
                del self._ack_delays[key]
            log.info("ads stream closed", stream=stream_id, node=node)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


class XdsServer:
    """A grpc.aio server exposing one AdsServicer on HOST:PORT."""

    def __init__(self, cache: SnapshotCache, host: str, port: int) -> None:
        self.servicer = AdsServicer(cache)
        self.address = f"{host}:{port}"
        self._server: grpc.aio.Server | None = None

    #: Envoy pings its xDS connection (see BootstrapConfig.keepalive_interval_s) on a stream that may carry
    #: no data for hours; gRPC's defaults would answer such pings with GOAWAY "too_many_pings". Our own
    #: pings find Envoys that vanished without a reset, so their streams do not linger.
    GRPC_OPTIONS = (
        ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    )

    async def start(self) -> None:
        server = grpc.aio.server(options=self.GRPC_OPTIONS)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.servicer, server)
        if server.add_insecure_port(self.address) == 0:
            raise OSError(f"cannot listen for xDS on {self.address}")
        await server.start()
        self._server = server
        log.info("xds server listening", address=self.address)

    async def stop(self, grace_s: float = 0.0) -> None:
        """Close every stream at once: ADS streams never finish on their own, so a grace period only waits.
        Envoy keeps its config and reconnects when a server is back."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
