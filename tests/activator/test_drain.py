"""The drain on SIGTERM is bounded: a WebSocket left open cannot keep the activator from exiting."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp

from kapa import contract

from activator.app import DRAIN_MARGIN_S
from tests.activator.harness import activator
from tests.activator.test_activator import HELLO, HOST, hello, session
from tests.activator.upstream import Upstream


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
