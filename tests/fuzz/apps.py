"""The upstream side of the fuzzing harness: an event loop whose connections to the apps are socketpairs,
and two apps (HTTP/1 and h2c) that answer every request with a fixed response and record what they parsed.

Socketpairs rather than loopback TCP: the fuzzer makes thousands of connections a second, and each TCP
connection the relay closes would sit in TIME_WAIT holding an ephemeral port (the range runs out within a
minute). The relay connects through `loop.create_connection(factory, host, port)` like any code; the loop
below serves the apps' addresses in-process and refuses every other, so nothing leaves the process.

Each app records what reached it as the app would see it (requests it parsed, streams it received), for
the harness to compare with what the relay counted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import httptools
import uvloop

from kapa.relay import Address

HTTP1_APP: Address = ("http1.app.fuzz", 1)
H2C_APP: Address = ("h2c.app.fuzz", 2)

#: The one response body both apps send.
BODY = b"ok"


class AppLoop(uvloop.Loop):  # type: ignore[misc]  # uvloop ships no stubs for subclassing
    """uvloop (what the proxies run on) with the apps' addresses served in-process; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._apps: dict[Address, Callable[[], asyncio.Protocol]] = {}
        self._refuse_every = 0
        self._attempts = 0

    def serve(self, apps: dict[Address, Callable[[], asyncio.Protocol]], refuse_every: int = 0) -> None:
        """From now on connect each address of `apps` to a new protocol of its factory; every `refuse_every`-th
        connection to HTTP1_APP is refused (0: none)."""
        self._apps = apps
        self._refuse_every = refuse_every
        self._attempts = 0

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Any, host: str | None = None, port: int | None = None, **kwargs: Any
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        if kwargs.get("sock") is not None:
            return await super().create_connection(protocol_factory, **kwargs)  # type: ignore[no-any-return]
        app = self._apps.get((host or "", port or 0))
        if app is None:
            raise ConnectionRefusedError(f"no app at {host}:{port} (the fuzzing harness stays in-process)")
        if (host, port) == HTTP1_APP:
            self._attempts += 1
            if self._refuse_every and self._attempts % self._refuse_every == 0:
                raise ConnectionRefusedError("the app refuses this connection")
        ours, theirs = socket.socketpair()
        await self.connect_accepted_socket(app, sock=theirs)
        return await super().create_connection(protocol_factory, sock=ours)  # type: ignore[no-any-return]


@dataclass
class AppRecord:
    """What the apps of one input received, and the connections they still have open."""

    #: (method, target) of every HTTP/1 request head the app parsed (bytes after an upgrade it accepted
    #: are the new protocol's and not parsed).
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: HTTP/1 request heads the app began to parse (first byte of a request seen).
    requests_begun: int = 0
    #: What the HTTP/1 app's parser refused, with the bytes of that connection: the relay sent it bytes no
    #: HTTP/1 server could take as requests.
    malformed: list[tuple[str, bytes]] = field(default_factory=list)
    #: HTTP/1 requests the app is serving: parsed, not yet answered, their connection open.
    requests_at_app: int = 0
    #: Stream ids of the requests the h2c app received (HEADERS it decoded as a request).
    streams: list[int] = field(default_factory=list)
    #: Streams the client reset at the h2c app.
    streams_reset: set[int] = field(default_factory=set)
    #: Streams the h2c app is serving: received, not yet answered whole nor reset, their connection open.
    streams_at_app: set[int] = field(default_factory=set)
    open_connections: int = 0
    #: The h2c app closed a connection itself (a protocol error, or the client's GOAWAY), as servers do.
    h2c_app_closed: bool = False
    #: Bumped on every event at either app: the harness waits for it to stand still (see `settle`).
    activity: int = 0


@dataclass(frozen=True)
class Http1AppBehaviour:
    """How the HTTP/1 app answers (see `tests.fuzz.harness.Behaviour`): each a way real apps differ."""

    declines_upgrades: bool = False
    closes_after_response: bool = False
    chunked_response: bool = False
    interim_response: bool = False
    #: Every other request is dropped with the connection, unanswered (an app that crashed mid-request).
    drops_some: bool = False
    #: Every third request is answered with a response head no parser takes.
    malformed_some: bool = False
    #: Responses carry no length: their end is the connection's close (HTTP/1.0 style).
    close_delimited: bool = False


class Http1App(asyncio.Protocol):
    """One connection of the HTTP/1 app: parses requests with httptools and answers each complete one.

    An upgrade to h2c it accepts hands the connection to an `H2cApp` (the request becomes stream 1); any
    other upgrade (or CONNECT) it accepts turns the connection into a sink for the new protocol's bytes. One
    it declines is answered as a plain request, and the bytes after it parsed as further requests: the app
    that ignores `Upgrade`, which is exactly the one that must never see such bytes uncounted.
    """

    def __init__(self, record: AppRecord, behaviour: Http1AppBehaviour, h2c_app: Callable[[], H2cApp]) -> None:
        self.record = record
        self.behaviour = behaviour
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.received = bytearray()
        self.tunnel = False
        self._h2c_app = h2c_app
        #: The app serving this connection since it was upgraded to h2c.
        self.h2c: H2cApp | None = None
        self._url = b""
        self._upgrade_to = b""
        self._h2c_settings: bytes | None = None
        #: Requests parsed on this connection and not answered (0 or 1: the relay does not overlap them).
        self._serving = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.record.open_connections += 1
        self.record.activity += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.record.open_connections -= 1
        self.record.activity += 1
        self._answered(self._serving)
        if self.h2c is not None:
            self.h2c.ended()

    def data_received(self, data: bytes) -> None:
        self.record.activity += 1
        self.received += data
        if self.h2c is not None:
            self.h2c.data_received(data)
        elif not self.tunnel:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            after = data[upgrade.args[0] :]
            if self.h2c is not None:
                if after:
                    self.h2c.data_received(after)
            elif not self.tunnel:  # declined: carry on as an app that ignores Upgrade
                self.parser = httptools.HttpRequestParser(self)
                self._feed(after)
        except httptools.HttpParserError as error:
            self.record.malformed.append((repr(error), bytes(self.received)))
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._upgrade_to = b""
        self._h2c_settings = None
        self.record.requests_begun += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"upgrade":
            self._upgrade_to = value.strip().lower()
        elif name == b"http2-settings":
            self._h2c_settings = value.strip()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        self.record.requests.append((self.parser.get_method(), self._url))
        self._serving += 1
        self.record.requests_at_app += 1

    def _answered(self, requests: int) -> None:
        self._serving -= requests
        self.record.requests_at_app -= requests

    def on_message_complete(self) -> None:
        assert self.transport is not None
        behaviour = self.behaviour
        if self.transport.is_closing():
            return
        self._answered(1)
        if behaviour.drops_some and len(self.record.requests) % 2 == 0:
            self.transport.close()
            return
        method = self.parser.get_method()
        if self.parser.should_upgrade() or method == b"CONNECT":
            if not behaviour.declines_upgrades:
                if method == b"CONNECT":
                    self.tunnel = True
                    self.transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    return
                if self._upgrade_to != b"h2c":
                    self.tunnel = True
                    self.transport.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                    )
                    return
                if self._h2c_settings is not None and self._upgrade_to_h2c(self._h2c_settings):
                    return
            elif method == b"CONNECT":  # declining CONNECT takes a non-2xx answer
                self.transport.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
        if behaviour.malformed_some and len(self.record.requests) % 3 == 0:
            self.transport.write(b"HTTP/1.1 2OO Okay\r\nContent-Length: 2\r\n\r\nok")
            return
        keep_alive = (
            self.parser.should_keep_alive() and not behaviour.closes_after_response and not behaviour.close_delimited
        )
        body = b"" if method == b"HEAD" else BODY
        interim = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n" if behaviour.interim_response else b""
        connection = b"" if keep_alive else b"Connection: close\r\n"
        if behaviour.close_delimited:
            framed = b"\r\n" + body
        elif behaviour.chunked_response:
            chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b""
            framed = b"Transfer-Encoding: chunked\r\n\r\n" + chunks
        else:
            framed = b"Content-Length: %d\r\n\r\n%s" % (len(BODY), body)
        self.transport.write(interim + b"HTTP/1.1 200 OK\r\n" + connection + framed)
        if not keep_alive:
            self.transport.close()

    def _upgrade_to_h2c(self, settings: bytes) -> bool:
        """Serve the connection as h2c from now on (RFC 7540 3.2); False, with nothing sent, when the
        client's HTTP2-Settings cannot be taken (the upgrade is then ignored, as servers do)."""
        assert self.transport is not None
        h2c = self._h2c_app()
        if not h2c.upgrade(self.transport, settings):
            return False
        self.h2c = h2c
        return True


class H2cApp(asyncio.Protocol):
    """One connection of the h2c app (the `h2` library, strict as a real server): answers each request 200
    with a short body, either as soon as its headers arrive (whether or not the client has ended its side)
    or once the client has ended the stream. A protocol error ends the connection, as it would there."""

    def __init__(self, record: AppRecord, answers_at_once: bool) -> None:
        self.record = record
        self.answers_at_once = answers_at_once
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        #: Streams of this connection in `record.streams_at_app`.
        self._serving: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.record.open_connections += 1
        self.record.activity += 1
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def upgrade(self, transport: asyncio.Transport, settings: bytes) -> bool:
        """Take over `transport` of a request with `Upgrade: h2c` and HTTP2-Settings `settings`: send 101,
        the preface and the answer to that request (stream 1). False, with nothing sent, if `settings` is
        not valid."""
        try:
            self.h2.initiate_upgrade_connection(settings)
        except Exception:  # noqa: BLE001  # bad base64, bad settings: h2 raises what it meets
            return False
        self.transport = transport
        self._answer(1)
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + self.h2.data_to_send()
        )
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.record.open_connections -= 1
        self.record.activity += 1
        self.ended()

    def ended(self) -> None:
        """The connection is gone, and with it every stream the app was serving."""
        self._serving_ends(*self._serving)

    def data_received(self, data: bytes) -> None:
        self.record.activity += 1
        assert self.transport is not None
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self._event(event)
        except Exception:  # noqa: BLE001  # h2's ProtocolError and its own bugs alike: the app is a test double,
            # and a broken app closes its connection (ending every stream); what it recorded before stands.
            self._close()
            return
        self.transport.write(self.h2.data_to_send())

    def _serving_ends(self, *stream_ids: int) -> None:
        self._serving.difference_update(stream_ids)
        self.record.streams_at_app.difference_update(stream_ids)

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.record.streams.append(event.stream_id)
            self._serving.add(event.stream_id)
            self.record.streams_at_app.add(event.stream_id)
            if self.answers_at_once:
                self._answer(event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and not self.answers_at_once:
            self._answer(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.record.streams_reset.add(event.stream_id)
            self._serving_ends(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close()

    def _close(self) -> None:
        assert self.transport is not None
        self.transport.write(self.h2.data_to_send())
        self.transport.close()
        self._serving_ends(*self._serving)
        self.record.h2c_app_closed = True

    def _answer(self, stream_id: int) -> None:
        stream = self.h2.streams.get(stream_id)
        if stream is None or stream.closed:  # the client reset it meanwhile
            return
        # A client that gave no flow-control window for the body gets none (an app would wait for one; this
        # one has nothing to wait for, and must not close the connection over it).
        body = BODY if self.h2.local_flow_control_window(stream_id) >= len(BODY) else b""
        self.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
        self.h2.send_data(stream_id, body, end_stream=True)
        self._serving_ends(stream_id)

    def eof_received(self) -> bool:
        return False
