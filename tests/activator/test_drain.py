"""The drain on SIGTERM is bounded: a WebSocket left open cannot keep the activator from exiting."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import grpc

from kapa.core import contract
from kapa.core.services import Endpoint

from activator.app import DRAIN_MARGIN_S
from tests.activator.harness import activator
from tests.activator.test_activator import HELLO, HOST, hello, session
from tests.activator.test_h2c import _ECHO
from tests.activator.upstream import Upstream
from tests.queue_proxy.conftest import queue_proxy
from tests.queue_proxy.grpc_app import grpc_server, identity


async def test_an_open_websocket_is_cut_at_the_longest_timeout_plus_margin(tmp_path: Path) -> None:
    timeout_s = 1.0
    upstream = await Upstream().start()
    try:
        services = [hello(**{contract.ANNOTATION_TIMEOUT_SECONDS: str(timeout_s)})]
        async with activator(tmp_path, services) as act, session() as client:
            await act.set_endpoints(client, HELLO, [upstream.endpoint])
            socket = await client.ws_connect(f"{act.url}/ws", headers=HOST)
            await socket.send_str("before")
            assert await socket.receive_str() == f"before from {upstream.port}"
            signalled = time.monotonic()
            os.kill(act.process.pid, signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, act.process.wait, 20)
            took = time.monotonic() - signalled
            assert code == 0
            assert timeout_s + DRAIN_MARGIN_S <= took < timeout_s + DRAIN_MARGIN_S + 3.0
            # The socket was open until then, and is closed now.
            message = await asyncio.wait_for(socket.receive(), 5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    finally:
        await upstream.stop()


async def test_a_grpc_call_held_at_zero_is_still_served_after_sigterm(tmp_path: Path) -> None:
    """A held h2c connection has no stream relayed yet, but it is not idle: the drain keeps it and serves
    it once a pod appears."""
    async with grpc_server(_ECHO) as app_port:
        async with activator(tmp_path, [hello()]) as act, session() as client:
            options = [("grpc.default_authority", "hello.default")]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{act.port}", options=options) as channel:
                echo = channel.unary_unary("/kapa.test.Echo/Echo", identity, identity)
                call = asyncio.ensure_future(echo(b"held", timeout=20))
                await asyncio.sleep(0.3)
                assert not call.done()  # held: no pod
                os.kill(act.process.pid, signal.SIGTERM)
                await asyncio.sleep(0.3)  # past the drain delay: the listener is closed
                with queue_proxy(tmp_path, app_port) as pod:
                    await act.set_endpoints(client, HELLO, [Endpoint("127.0.0.1", pod.port)])
                    assert await call == b"echo held"
