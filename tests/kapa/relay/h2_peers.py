"""Two real h2c peers for the relay's edge tests, on loopback sockets.

`RawH2Client` writes whatever frames a test asks for (it ignores SETTINGS_MAX_CONCURRENT_STREAMS, resets at
will), as a misbehaving or hostile client would; it still keeps HPACK right (its encoder follows the
HEADER_TABLE_SIZE it is sent), so what the app decodes tells whether the relay kept HPACK in step.
`H2App` is an h2c server on the `h2` library that records every stream and reset it receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from hpack import Decoder, Encoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from kapa.relay.h2c import PREFACE

CANCEL, REFUSED_STREAM, ENHANCE_YOUR_CALM, NO_ERROR = 0x8, 0x7, 0xB, 0x0


class RawH2Client:
    """An h2c client on one connection, frame by frame; see the module docstring."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._encoder = Encoder()
        self._decoder = Decoder()
        #: Every frame received, in order.
        self.received: list[Frame] = []
        #: Statuses of responses received, by stream.
        self.statuses: dict[int, int] = {}
        self.closed = False

    @classmethod
    async def connect(cls, port: int) -> RawH2Client:
        """Connect and send the preface with an empty SETTINGS frame."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        await client.send(PREFACE + SettingsFrame(0).serialize())
        return client

    def headers(self, stream_id: int, authority: str = "app.tests", path: str = "/", end_stream: bool = True) -> bytes:
        fields = [(":method", "POST"), (":scheme", "http"), (":authority", authority), (":path", path)]
        frame = HeadersFrame(stream_id, self._encoder.encode(fields))
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    @staticmethod
    def data(stream_id: int, body: bytes, end_stream: bool = True) -> bytes:
        frame = DataFrame(stream_id, body)
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    @staticmethod
    def reset(stream_id: int, error_code: int = CANCEL) -> bytes:
        return RstStreamFrame(stream_id, error_code).serialize()

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def until(self, wanted: Callable[[Frame], bool], timeout_s: float = 10.0) -> Frame:
        """Read frames (ACKing SETTINGS as a client must) until one matches `wanted`; fails at EOF or timeout."""
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self._next()
                if frame is None:
                    raise AssertionError(f"connection closed; frames received: {self.received}")
                if wanted(frame):
                    return frame

    async def until_closed(self, timeout_s: float = 10.0) -> None:
        """Read frames until the relay closes the connection."""
        async with asyncio.timeout(timeout_s):
            while await self._next() is not None:
                pass

    def frames(self, kind: type[Frame]) -> list[Frame]:
        return [frame for frame in self.received if isinstance(frame, kind)]

    def resets(self, error_code: int) -> list[int]:
        """Streams the peer reset with `error_code`, in order."""
        return [f.stream_id for f in self.frames(RstStreamFrame) if f.error_code == error_code]  # type: ignore[attr-defined]

    def connection_window_credit(self) -> int:
        return sum(f.window_increment for f in self.frames(WindowUpdateFrame) if f.stream_id == 0)  # type: ignore[attr-defined]

    def goaway(self) -> GoAwayFrame | None:
        found = self.frames(GoAwayFrame)
        return found[0] if found else None  # type: ignore[return-value]

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass

    async def _next(self) -> Frame | None:
        try:
            head = await self._reader.readexactly(9)
            frame, length = Frame.parse_frame_header(memoryview(head))
            frame.parse_body(memoryview(await self._reader.readexactly(length)))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = True
            return None
        self.received.append(frame)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            table_size = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
            if table_size is not None:
                self._encoder.header_table_size = table_size  # RFC 7541 4.2: signalled in the next block
            ack = SettingsFrame(0)
            ack.flags.add("ACK")
            await self.send(ack.serialize())
        elif isinstance(frame, HeadersFrame):
            fields = dict(self._decoder.decode(frame.data))
            if ":status" in fields and frame.stream_id not in self.statuses:
                self.statuses[frame.stream_id] = int(fields[":status"])
        return frame


class H2App:
    """An h2c app (the `h2` library) that records the streams it receives. With `answer_at_once` each
    request is answered 200 with END_STREAM as soon as its headers arrive (whether or not the client has
    ended its side); otherwise requests wait for `answer_all`."""

    def __init__(self, answer_at_once: bool) -> None:
        self.answer_at_once = answer_at_once
        #: (stream id, headers) of every request received, in order.
        self.requests: list[tuple[int, dict[str, str]]] = []
        #: Streams the client reset.
        self.resets: list[int] = []
        self.open_connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self._waiting: list[tuple[h2.connection.H2Connection, asyncio.StreamWriter, int]] = []

    def paths(self) -> list[str]:
        return [headers[":path"] for _, headers in self.requests]

    def answer_all(self) -> None:
        waiting, self._waiting = self._waiting, []
        for connection, writer, stream_id in waiting:
            self._answer(connection, writer, stream_id)

    @staticmethod
    def _answer(connection: h2.connection.H2Connection, writer: asyncio.StreamWriter, stream_id: int) -> None:
        try:
            connection.send_headers(stream_id, [(":status", "200")], end_stream=True)
        except h2.exceptions.ProtocolError:  # the client reset it meanwhile
            return
        writer.write(connection.data_to_send())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        self._writers.add(writer)
        try:
            await self._relay(reader, writer)
        finally:
            self._serving.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        if not data:  # the queue-proxy's TCP readiness probe
            return
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        connection.initiate_connection()
        writer.write(connection.data_to_send())
        self.open_connections += 1  # counted from the first bytes: the queue-proxy's TCP probes are not
        try:
            while data:
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.requests.append((event.stream_id, dict(event.headers)))  # type: ignore[arg-type]
                        if self.answer_at_once:
                            self._answer(connection, writer, event.stream_id)
                        else:
                            self._waiting.append((connection, writer, event.stream_id))
                    elif isinstance(event, h2.events.DataReceived):
                        connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets.append(event.stream_id)
                writer.write(connection.data_to_send())
                data = await reader.read(65536)
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.open_connections -= 1

    async def close(self) -> None:
        """Close every connection and wait for their handlers to end."""
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._serving, return_exceptions=True)


@asynccontextmanager
async def h2_app(answer_at_once: bool = True) -> AsyncIterator[tuple[H2App, int]]:
    """An `H2App` listening on a free loopback port; yields it and the port."""
    app = H2App(answer_at_once)
    server = await asyncio.start_server(app._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield app, port
    finally:
        server.close()
        await app.close()
        await server.wait_closed()
