"""The activator's client connections have the relay's header-read and idle timeouts (set by flags)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.activator.harness import activator
from tests.activator.test_activator import HELLO, hello, session
from tests.activator.upstream import Upstream


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


async def test_a_trickled_head_gets_408_and_an_idle_connection_is_closed(tmp_path: Path) -> None:
    upstream = await Upstream().start()
    try:
        flags = ("--header-read-timeout", "0.5", "--idle-timeout", "1")
        async with activator(tmp_path, [hello()], *flags) as act, session() as client:
            await act.set_endpoints(client, HELLO, [upstream.endpoint])

            reader, writer = await asyncio.open_connection("127.0.0.1", act.port)
            started = time.monotonic()
            writer.write(b"GET / HTTP/1.1\r\nHost: hello.default\r\nX-Sl")
            answer = await _until_closed(reader)
            assert answer.startswith(b"HTTP/1.1 408 ") and 0.5 <= time.monotonic() - started < 1.5
            writer.close()

            reader, writer = await asyncio.open_connection("127.0.0.1", act.port)
            writer.write(b"GET /?id=1 HTTP/1.1\r\nHost: hello.default\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            answered = time.monotonic()
            assert await _until_closed(reader) == b""  # closed without a word once idle
            assert 1.0 <= time.monotonic() - answered < 2.0
            writer.close()
    finally:
        await upstream.stop()
