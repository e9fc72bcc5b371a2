"""gRPC apps for the queue-proxy's h2c tests: generic handlers (bytes in, bytes out), no generated code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from tests.support import free_port


def identity(data: bytes) -> bytes:
    return data


class Greeter:
    """`Unary` answers at once; `Held` sends one message, then another once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"hello " + request

    async def held(self, request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        yield b"first"
        await self.release.wait()
        yield b"second"

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("kapa.test.Greeter", {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary, identity, identity),
            "Held": grpc.unary_stream_rpc_method_handler(self.held, identity, identity),
        })


@asynccontextmanager
async def grpc_server(handler: grpc.GenericRpcHandler) -> AsyncIterator[int]:
    """A gRPC server on a free loopback port serving `handler`; yields the port."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)
