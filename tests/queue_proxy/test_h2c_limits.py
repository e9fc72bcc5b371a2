"""gRPC (h2c) streams under CONTAINER_CONCURRENCY and REVISION_TIMEOUT_SECONDS: the client is told to open
at most CONTAINER_CONCURRENCY streams at once (it queues the rest), and a stream with no response by the
timeout is cancelled (RST_STREAM CANCEL to both ends) and counted as a 504."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy, queue_proxy
from tests.queue_proxy.grpc_app import grpc_server, identity


class _Service:
    """Counts the calls at the app at once; `Slow` answers after 150 ms, `Never` waits until released (and
    notes when the proxy cancels it instead), `Stream` sends one message at once and another when released."""

    def __init__(self) -> None:
        self.current = 0
        self.most = 0
        self.release = asyncio.Event()
        #: Set when a `Never` call was cancelled at the app: its stream was reset from the proxy's side.
        self.never_cancelled = asyncio.Event()

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.current += 1
        self.most = max(self.most, self.current)
        try:
            await asyncio.sleep(0.15)
            return request
        finally:
            self.current -= 1

    async def never(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.never_cancelled.set()
            raise
        return b"late"

    async def stream(self, request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        yield b"first"
        await self.release.wait()
        yield b"second"

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("kapa.test.Limits", {
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow, identity, identity),
            "Never": grpc.unary_unary_rpc_method_handler(self.never, identity, identity),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream, identity, identity),
        })


@pytest.fixture
async def grpc_app() -> tuple[_Service, int]:  # type: ignore[misc]
    service = _Service()
    async with grpc_server(service.handler()) as port:
        yield service, port
        service.release.set()


async def _metric(proxy: Proxy, name: str, **labels: str) -> float:
    return await asyncio.to_thread(proxy.metric, name, **labels)


async def test_container_concurrency_caps_the_streams_a_grpc_client_opens(
    tmp_path: Path, grpc_app: tuple[_Service, int]
) -> None:
    service, app_port = grpc_app
    with queue_proxy(tmp_path, app_port, **{contract.ENV_CONTAINER_CONCURRENCY: "2"}) as proxy:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 5)
            slow = channel.unary_unary("/kapa.test.Limits/Slow", identity, identity)
            answers = await asyncio.gather(*(slow(b"%d" % i, timeout=20) for i in range(12)))
    assert answers == [b"%d" % i for i in range(12)]
    assert service.most == 2  # 12 calls in flight at the client, never more than 2 at the app


async def test_without_a_limit_the_same_calls_run_side_by_side(tmp_path: Path, grpc_app: tuple[_Service, int]) -> None:
    service, app_port = grpc_app
    with queue_proxy(tmp_path, app_port) as proxy:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            slow = channel.unary_unary("/kapa.test.Limits/Slow", identity, identity)
            await asyncio.gather(*(slow(b"%d" % i, timeout=20) for i in range(12)))
    assert service.most > 2


async def test_a_stream_without_a_response_by_the_timeout_is_cancelled_as_a_504(
    tmp_path: Path, grpc_app: tuple[_Service, int]
) -> None:
    service, app_port = grpc_app
    with queue_proxy(tmp_path, app_port, **{contract.ENV_REVISION_TIMEOUT_SECONDS: "0.5"}) as proxy:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            never = channel.unary_unary("/kapa.test.Limits/Never", identity, identity)
            stream = channel.unary_stream("/kapa.test.Limits/Stream", identity, identity)
            slow = channel.unary_unary("/kapa.test.Limits/Slow", identity, identity)

            streaming = stream(b"", timeout=20)
            assert await streaming.read() == b"first"  # answered: the timeout no longer applies
            started = asyncio.get_running_loop().time()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await never(b"", timeout=20)
            waited = asyncio.get_running_loop().time() - started
            assert raised.value.code() == grpc.StatusCode.CANCELLED
            assert 0.5 <= waited < 2.0
            # The other end: the app's call was cancelled too (RST_STREAM reached it), not left to run on.
            await asyncio.wait_for(service.never_cancelled.wait(), 5)

            # The connection and the answered stream carry on.
            assert await slow(b"after", timeout=5) == b"after"
            service.release.set()
            assert await streaming.read() == b"second"
            assert await streaming.read() == grpc.aio.EOF
        await asyncio.sleep(0.1)
        assert await _metric(proxy, contract.REJECTED_REQUESTS, reason=contract.REASON_TIMEOUT) == 1
        assert await _metric(proxy, contract.REQUESTS, code_class="5xx") == 1
        assert await _metric(proxy, contract.REQUESTS, code_class="2xx") == 2
        assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0
