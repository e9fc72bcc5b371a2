"""WebSocket and h2c (gRPC) through the queue-proxy, each counted as in-flight requests while open."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import grpc
import h2.config
import h2.connection
import h2.events

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy, queue_proxy
from tests.queue_proxy.grpc_app import Greeter, grpc_server, identity


async def _metric(proxy: Proxy, name: str, **labels: str) -> float:
    return await asyncio.to_thread(proxy.metric, name, **labels)


async def test_websocket_echo_is_one_request_while_open(proxy: Proxy) -> None:
    before = await _metric(proxy, contract.REQUESTS, code_class="1xx")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{proxy.url}/ws") as socket:
            for index in range(50):
                await socket.send_str(f"hello {index}")
                assert (await socket.receive_str()) == f"echo:hello {index}"
            await socket.send_bytes(b"\x00" * 300_000)
            assert (await socket.receive_bytes()) == b"\x00" * 300_000
            assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 1
    for _ in range(50):
        if await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0:
            break
        await asyncio.sleep(0.02)
    assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0
    assert await _metric(proxy, contract.REQUESTS, code_class="1xx") == before + 1


async def test_grpc_over_h2c_is_relayed_and_each_stream_counted(tmp_path: Path) -> None:
    greeter = Greeter()
    async with grpc_server(greeter.handler()) as app_port:
        with queue_proxy(tmp_path, app_port) as proxy:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
                unary = channel.unary_unary("/kapa.test.Greeter/Unary", identity, identity)
                held = channel.unary_stream("/kapa.test.Greeter/Held", identity, identity)
                for index in range(20):
                    assert await unary(b"%d" % index, timeout=5) == b"hello %d" % index
                assert await _metric(proxy, contract.REQUESTS, code_class="2xx") == 20
                assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0

                call = held(b"", timeout=10)
                assert await call.read() == b"first"
                assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 1
                await asyncio.sleep(0.3)
                greeter.release.set()
                assert await call.read() == b"second"
                assert await call.read() == grpc.aio.EOF
                await asyncio.sleep(0.05)
                assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0
                assert await _metric(proxy, contract.REQUESTS, code_class="2xx") == 21
                # The held stream was in flight for its ~0.3 s.
                assert await _metric(proxy, contract.CONCURRENCY_SECONDS) >= 0.3


async def _h2c_upgrade_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An app that accepts `Upgrade: h2c` (RFC 7540 3.2) and answers every stream with its path."""
    head = await reader.readuntil(b"\r\n\r\n")
    settings = re.search(rb"(?i)\r\nhttp2-settings: *([^\r]+)", head).group(1)  # type: ignore[union-attr]
    path = head.split(b" ")[1]
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_upgrade_connection(settings)
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")

    def answer(stream_id: int, text: bytes) -> None:
        conn.send_headers(stream_id, [(":status", "200"), ("content-length", str(len(text)))])
        conn.send_data(stream_id, text, end_stream=True)

    answer(1, path)
    writer.write(conn.data_to_send())
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                answer(event.stream_id, dict(event.headers)[b":path"])
        writer.write(conn.data_to_send())
    writer.close()


async def test_h2c_upgrade_counts_the_upgrading_request_and_later_streams(tmp_path: Path) -> None:
    app = await asyncio.start_server(_h2c_upgrade_app, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    try:
        with queue_proxy(tmp_path, app_port) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            client = h2.connection.H2Connection()
            settings = client.initiate_upgrade_connection()
            writer.write(
                b"GET /first HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                b"HTTP2-Settings: " + settings + b"\r\n\r\n"
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            writer.write(client.data_to_send())
            client.send_headers(3, [(":method", "GET"), (":path", "/second"), (":scheme", "http"), (":authority", "app")], end_stream=True)
            writer.write(client.data_to_send())
            bodies: dict[int, bytes] = {}
            ended: set[int] = set()
            while ended != {1, 3}:
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, "connection closed early"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    elif isinstance(event, h2.events.StreamEnded):
                        ended.add(event.stream_id)
                writer.write(client.data_to_send())
            assert bodies == {1: b"/first", 3: b"/second"}
            await asyncio.sleep(0.05)
            assert await _metric(proxy, contract.REQUESTS, code_class="2xx") == 2
            assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0
            writer.close()
    finally:
        app.close()
