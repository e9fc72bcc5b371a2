"""gRPC (prior-knowledge h2c) through the activator: a connection for a service at zero is held, routed by its
first request's :authority, pinned to the first ready pod, and its streams are counted as proxied by the
pod's queue-proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from kapa.core import contract
from kapa.core.services import Endpoint

from tests.activator.harness import activator, metric_value
from tests.activator.test_activator import HELLO, hello, session, wait_for
from tests.activator.test_poke import Scaler
from tests.activator.upstream import DyingUpstream
from tests.queue_proxy.conftest import queue_proxy
from tests.queue_proxy.grpc_app import grpc_server, identity


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"echo " + request


_ECHO = grpc.method_handlers_generic_handler(
    "kapa.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo, identity, identity)}
)


async def test_a_grpc_call_at_zero_is_held_then_served_and_counted_proxied(tmp_path: Path) -> None:
    scaler = await Scaler().start()
    try:
        async with grpc_server(_ECHO) as app_port:
            async with activator(tmp_path, [hello()], scaler_urls=[scaler.url]) as act, session() as client:
                options = [("grpc.default_authority", "hello.default")]
                async with grpc.aio.insecure_channel(f"127.0.0.1:{act.port}", options=options) as channel:
                    echo = channel.unary_unary("/kapa.test.Echo/Echo", identity, identity)
                    first = asyncio.ensure_future(echo(b"first", timeout=20))
                    await asyncio.sleep(0.3)
                    assert not first.done()  # held: no pod
                    assert scaler.pokes == ["default/hello"]
                    with queue_proxy(tmp_path, app_port) as pod:
                        await act.set_endpoints(client, HELLO, [Endpoint("127.0.0.1", pod.port)])
                        assert await first == b"echo first"
                        answers = await asyncio.gather(*(echo(b"%d" % i, timeout=10) for i in range(10)))
                        assert answers == [b"echo %d" % i for i in range(10)]
                        await asyncio.sleep(0.1)
                        assert await asyncio.to_thread(pod.metric, contract.PROXIED_REQUESTS) == 11
                        assert await asyncio.to_thread(pod.metric, contract.REQUESTS, code_class="2xx") == 11
                        text = await act.metrics(client)
                        assert metric_value(text, contract.REQUESTS, code_class="2xx") == 11
                        assert metric_value(text, contract.REQUESTS_IN_FLIGHT) == 0
                        assert metric_value(text, contract.ACTIVATOR_COLD_START_WAIT + "_count") == 1
    finally:
        await scaler.stop()


async def test_an_h2c_connection_for_no_service_is_closed(tmp_path: Path) -> None:
    async with activator(tmp_path, [hello()]) as act:
        options = [("grpc.default_authority", "nobody.example")]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.port}", options=options) as channel:
            echo = channel.unary_unary("/kapa.test.Echo/Echo", identity, identity)
            try:
                await echo(b"x", timeout=5)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
            else:
                raise AssertionError("the call should have failed")


async def test_an_h2c_connection_refused_by_a_gone_pod_waits_for_another(tmp_path: Path) -> None:
    gone = await DyingUpstream().start()
    async with grpc_server(_ECHO) as app_port:
        async with activator(tmp_path, [hello()]) as act, session() as client:
            await act.set_endpoints(client, HELLO, [gone.endpoint])

            async def gone_is_ready() -> bool:
                return metric_value(await act.metrics(client), contract.ACTIVATOR_READY_PODS) == 1

            await wait_for(gone_is_ready)
            gone.die()  # and the activator is not told
            options = [("grpc.default_authority", "hello.default")]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{act.port}", options=options) as channel:
                echo = channel.unary_unary("/kapa.test.Echo/Echo", identity, identity)
                call = asyncio.ensure_future(echo(b"rescued", timeout=20))
                await asyncio.sleep(0.3)
                assert not call.done()  # the gone pod refused; the connection waits
                with queue_proxy(tmp_path, app_port) as pod:
                    await act.set_endpoints(client, HELLO, [gone.endpoint, Endpoint("127.0.0.1", pod.port)])
                    assert await call == b"echo rescued"
