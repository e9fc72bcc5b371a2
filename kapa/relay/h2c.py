"""HTTP/2 cleartext (h2c, and so gRPC) relayed at frame level: bytes pass unchanged, only the 9-byte frame
headers are read, to count each stream as one request.

A few changes are made between two frames, never inside one, and never to HPACK state: SETTINGS frames
(a cap on concurrent streams toward the client, a mark for the next hop, dropping the client's ACK of the
relay's own SETTINGS) and RST_STREAM frames of a stream the handler cancels. To route a connection, a
handler may read its first request's header block (`H2cTunnel.read_request`), decoded once with a fresh
HPACK decoder and then forwarded unchanged.

A stream is opened by the client's first HEADERS frame on a new odd stream id and closed when both sides
have sent END_STREAM or either sent RST_STREAM (RFC 9113 section 5.1), or when the connection ends.
The response status is read from the first bytes of the server's HEADERS block when HPACK encodes it in
the usual way (a static-table index, or a literal with the `:status` name); a status the encoder put in
its dynamic table cannot be read without decoding every header block, and is reported as 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hpack import Decoder
from hpack.exceptions import HPACKError

from kapa.relay.tunnel import Pipe

if TYPE_CHECKING:
    from kapa.relay.http1 import Exchange, RelayServer
    from kapa.relay.pool import Address

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_DATA, _HEADERS, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x3, 0x4
_END_STREAM, _ACK, _PADDED, _PRIORITY = 0x1, 0x1, 0x8, 0x20
_CONTINUATION = 0x9
_END_HEADERS = 0x4
_LOOKED_AT = frozenset((_HEADERS, _SETTINGS))
_MAX_CONCURRENT_STREAMS = 0x3
_CANCEL = 0x8
#: A SETTINGS frame with no parameters: all defaults (what the relay sends when it answers a preface).
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
#: HPACK static table indexes 8..14 are `:status` with these values (RFC 7541 appendix A).
_STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}
_CLIENT, _SERVER, _PROXY = "client", "server", "proxy"


class H2Stream:
    """One HTTP/2 request/response through the relay."""

    __slots__ = (
        "stream_id", "started_at", "status", "responded", "reset_by", "client_ended", "server_ended", "tag",
        "exchange", "connection",
    )

    def __init__(self, stream_id: int, started_at: float, connection: H2cRelay | None = None) -> None:
        self.stream_id = stream_id
        self.started_at = started_at
        #: Response status when it could be read, else 0.
        self.status = 0
        #: The server has sent the response's HEADERS (its status may still be unknown).
        self.responded = False
        #: "client" or "server" when the stream ended with RST_STREAM (or the connection closed under it),
        #: "proxy" when the relay cancelled it (`cancel`).
        self.reset_by: str | None = None
        self.client_ended = False
        self.server_ended = False
        #: Free for the handler (the queue-proxy marks what it counted).
        self.tag: object = None
        #: For stream 1 of a connection upgraded from HTTP/1.1: the exchange that asked for the upgrade.
        self.exchange: Exchange | None = None
        self.connection = connection

    def cancel(self, status: int) -> None:
        """End the stream from the relay: RST_STREAM (CANCEL) to both ends, recorded with `status`."""
        if self.connection is not None:
            self.connection.cancel(self, status)


def stream_status(stream: H2Stream) -> int:
    """The status to record for a finished stream: the response's when it was read (or the relay's own, for a
    stream it cancelled); else 200 for a stream both sides ended normally, 499 (client closed request) or
    502 for one reset by the client or server."""
    if stream.status:
        return stream.status
    if stream.reset_by is None:
        return 200
    return 499 if stream.reset_by == _CLIENT else 502


def read_status(block: bytes) -> int:
    """The `:status` of a response header block's first field, or 0 when HPACK hides it.

    `block` is the start of the header block fragment. Only the status class is exact for Huffman-coded
    literals (the first digit is decoded; 200, 300, 400 or 500 is returned).
    """
    pos = 0
    while pos < len(block):
        first = block[pos]
        if first & 0x80:  # indexed field
            return _STATIC_STATUS.get(first & 0x7F, 0)
        if first & 0xE0 == 0x20:  # dynamic table size update: skip it (and its integer continuation)
            pos += 1
            if first & 0x1F == 0x1F:
                while pos < len(block) and block[pos] & 0x80:
                    pos += 1
                pos += 1
            continue
        name_index = first & 0x3F if first & 0xC0 == 0x40 else first & 0x0F
        if name_index not in _STATIC_STATUS or pos + 1 >= len(block):
            return 0
        length_byte = block[pos + 1]
        value = block[pos + 2 : pos + 2 + (length_byte & 0x7F)]
        if not value:
            return 0
        if not length_byte & 0x80:
            return int(value[:3]) if value[:3].isdigit() else 0
        # Huffman: '1' and '2' are 5-bit codes 00001, 00010; '3'..'5' are 6-bit 011001..011011.
        top = value[0]
        if top >> 3 == 0b00001:
            return 100
        if top >> 3 == 0b00010:
            return 200
        return {0b011001: 300, 0b011010: 400, 0b011011: 500}.get(top >> 2, 0)
    return 0


class _FrameStream:
    """One direction of an h2c connection: follows frame boundaries, calls `on_frame` per frame header, and
    returns the bytes to forward for each chunk received.

    Forwarded bytes are the received ones, with a few frame-level changes: with `max_streams`, every
    SETTINGS frame (not an ACK) has SETTINGS_MAX_CONCURRENT_STREAMS held to at most that value (added to
    the first one when absent); `add_setting` (6 bytes: identifier, value) goes first into the first
    SETTINGS frame; `drop_ack` drops the first SETTINGS ACK (the ACK of a SETTINGS frame the relay sent
    itself); whole frames given to `insert` go out between two frames. Only an incomplete frame header
    (under 9 bytes) is held back, and a SETTINGS frame until it is complete when one is to change; DATA
    and every other payload pass as they arrive.
    """

    __slots__ = (
        "_skip", "_partial", "_on_frame", "_max_streams", "_settings_seen", "_inserts", "_sent_ahead",
        "_add_setting", "_drop_ack", "_settings_work",
    )

    def __init__(
        self, on_frame: Callable[[int, int, int, bytes], None], skip: int = 0, max_streams: int = 0,
        add_setting: bytes = b"", drop_ack: bool = False,
    ) -> None:
        #: Payload bytes of the current frame still to pass (or of the client preface, at the start).
        self._skip = skip
        #: The start of a frame not yet forwarded: an incomplete header, or a SETTINGS frame being clamped.
        self._partial = b""
        self._on_frame = on_frame
        self._max_streams = max_streams
        self._settings_seen = False
        self._inserts: list[bytes] = []
        #: Leading bytes of `_partial` that went out already (see `already_sent`).
        self._sent_ahead = 0
        self._add_setting = add_setting
        self._drop_ack = drop_ack
        #: Some SETTINGS frame may still change.
        self._settings_work = bool(max_streams or add_setting or drop_ack)

    def at_boundary(self) -> bool:
        """True when the next byte to forward starts a frame: a frame written now lands between two."""
        return self._skip == 0 and not self._sent_ahead

    def insert(self, frame: bytes) -> None:
        """Forward `frame` at the next boundary (call only when not `at_boundary`; else write it at once)."""
        self._inserts.append(frame)

    def already_sent(self, data: bytes) -> None:
        """Follow `data` that was forwarded before this stream existed (after an upgrade's 101)."""
        self.feed(data)
        self._sent_ahead = len(self._partial)

    def feed(self, data: bytes) -> bytes:
        """Take `data` received; return what to forward now."""
        skip = self._skip
        if skip and not self._partial:
            if skip > len(data):  # the common case inside a large DATA frame: nothing to look at
                self._skip = skip - len(data)
                return data
        if self._partial:
            data = self._partial + data
            self._partial = b""
        drop, self._sent_ahead = self._sent_ahead, 0  # leading bytes forwarded already
        size = len(data)
        pos = skip
        run_start = 0  # data[run_start:pos] goes out unchanged
        out: list[bytes] | None = None
        while True:
            if pos > size:
                self._skip = pos - size
                pos = size
                break
            self._skip = 0
            if self._inserts and pos >= drop:
                if out is None:
                    out = []
                out.append(data[run_start:pos])
                out.extend(self._inserts)
                self._inserts.clear()
                run_start = pos
            if pos + 9 > size:
                break
            length = int.from_bytes(data[pos : pos + 3], "big")
            frame_type = data[pos + 3]
            flags = data[pos + 4]
            if frame_type == _SETTINGS and self._settings_work:
                end = pos + 9 + length
                if end > size:
                    break  # held until complete
                replacement = self._settings(data[pos:end], flags)
                if replacement is not None:
                    if out is None:
                        out = []
                    out.append(data[run_start:pos])
                    out.append(replacement)
                    run_start = end
            stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            # Only HEADERS and SETTINGS payloads are looked at (their first bytes: status, settings).
            payload = data[pos + 9 : pos + 9 + min(length, 64)] if frame_type in _LOOKED_AT else b""
            self._on_frame(frame_type, flags, stream_id, payload)
            pos += 9 + length
        self._partial = data[pos:]
        if drop:
            if pos == 0:  # still the same incomplete header
                self._sent_ahead = drop
                return b""
            run_start = max(run_start, drop)
        if out is None:
            return data[run_start:pos] if run_start or pos < size else data
        out.append(data[run_start:pos])
        return b"".join(out)

    def _settings(self, frame: bytes, flags: int) -> bytes | None:
        """What to forward instead of a SETTINGS frame (b"": nothing), or None to forward it as it is."""
        if flags & _ACK:
            if not self._drop_ack:
                return None
            self._drop_ack = False
            replacement: bytes | None = b""
        else:
            replacement = self._clamp(frame) if self._max_streams else None
            if self._add_setting:
                frame = replacement or frame
                payload = self._add_setting + frame[9:]
                replacement = len(payload).to_bytes(3, "big") + frame[3:9] + payload
                self._add_setting = b""
        self._settings_work = bool(self._max_streams or self._add_setting or self._drop_ack)
        return replacement

    def _clamp(self, frame: bytes) -> bytes:
        """A SETTINGS frame with MAX_CONCURRENT_STREAMS at most `max_streams` (added to the first frame)."""
        first, self._settings_seen = not self._settings_seen, True
        payload = bytearray(frame[9:])
        found = False
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            if int.from_bytes(payload[offset : offset + 2], "big") == _MAX_CONCURRENT_STREAMS:
                found = True
                value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
                payload[offset + 2 : offset + 6] = min(value, self._max_streams).to_bytes(4, "big")
        if not found:
            if not first:
                return frame  # the value in force stays the clamped one
            payload += _MAX_CONCURRENT_STREAMS.to_bytes(2, "big") + self._max_streams.to_bytes(4, "big")
        return len(payload).to_bytes(3, "big") + frame[3:9] + bytes(payload)


class H2cRelay:
    """Relays one h2c connection and keeps its streams' books; see the module docstring."""

    def __init__(self, server: RelayServer, client: asyncio.Transport, upgraded: Exchange | None = None) -> None:
        self.server = server
        self.client = client
        self.streams: dict[int, H2Stream] = {}
        self._last_client_stream = 0
        self._pipe: Pipe | None = None
        self._closed = False
        #: The first bytes of the client's first SETTINGS payload (None before it): a hop before may have
        #: put its mark there (see H2cTunnel.forward's `add_setting`).
        self.client_settings: bytes | None = None
        #: Free for the handler.
        self.tag: object = None
        self._client_frames = _FrameStream(self._client_frame, skip=len(PREFACE))
        self._server_frames = _FrameStream(self._server_frame)
        if upgraded is not None:
            # RFC 7540 3.2: the request that carried `Upgrade: h2c` becomes stream 1, half-closed by the client.
            stream = H2Stream(1, upgraded.started_at)
            stream.client_ended = True
            stream.exchange = upgraded
            self.streams[1] = stream
            self._last_client_stream = 1

    @property
    def idle(self) -> bool:
        """No stream open on a relaying connection. A connection still waiting for its upstream (held by
        the activator, or connecting) carries a request not yet counted as a stream: not idle."""
        return self._pipe is not None and not self.streams

    def start(
        self, upstream: asyncio.Transport, to_upstream: bytes = b"", to_client: bytes = b"", upstream_sent: bytes = b"",
        max_streams: int = 0, add_setting: bytes = b"", drop_ack: bool = False,
    ) -> None:
        """Relay between the client and a connected upstream transport. `to_upstream`, `to_client`: bytes
        not yet forwarded; `upstream_sent`: upstream bytes already forwarded to the client (only scanned).
        `max_streams` > 0: the client is told (SETTINGS_MAX_CONCURRENT_STREAMS) to open at most that many
        streams at once, whatever the upstream allows; only before the upstream's first SETTINGS went out,
        so not after an upgrade. `add_setting`, `drop_ack`: see `_FrameStream` (client to upstream)."""
        if upstream_sent:
            self._server_frames.already_sent(upstream_sent)
        elif max_streams:
            self._server_frames = _FrameStream(self._server_frame, max_streams=max_streams)
        if add_setting or drop_ack:
            self._client_frames = _FrameStream(
                self._client_frame, skip=len(PREFACE), add_setting=add_setting, drop_ack=drop_ack
            )
        self._pipe = Pipe(
            self.client, upstream, self._pipe_closed,
            filter_client=self._client_frames.feed, filter_upstream=self._server_frames.feed,
        )
        self._pipe.start(to_upstream, to_client)

    def cancel(self, stream: H2Stream, status: int) -> None:
        """RST_STREAM (CANCEL) to the client and the upstream, each between two frames, and close the books
        of `stream` with `status`. Frames either end sent meanwhile are theirs to ignore (RFC 9113 5.1)."""
        if self.streams.get(stream.stream_id) is not stream or self._pipe is None:
            return
        frame = b"\x00\x00\x04" + bytes((_RST_STREAM, 0)) + stream.stream_id.to_bytes(4, "big") + _CANCEL.to_bytes(4, "big")
        for frames, transport in (
            (self._client_frames, self._pipe.upstream_end.transport),
            (self._server_frames, self.client),
        ):
            if frames.at_boundary():
                transport.write(frame)
            else:
                frames.insert(frame)
        stream.status = status
        stream.reset_by = _PROXY
        self._close_stream(stream)

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        else:
            self.client.close()

    # --- frame bookkeeping ------------------------------------------------------------------------------

    def _client_frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        if frame_type == _HEADERS:
            stream = self.streams.get(stream_id)
            if stream is None:
                if not stream_id & 1 or stream_id <= self._last_client_stream:
                    return  # trailers of a closed stream or a protocol error the upstream will answer
                self._last_client_stream = stream_id
                stream = H2Stream(stream_id, time.monotonic(), self)
                self.streams[stream_id] = stream
                self.server.handler.stream_opened(stream)
            if flags & _END_STREAM:
                self._ended(stream, _CLIENT)
        elif frame_type == _DATA:
            if flags & _END_STREAM:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    self._ended(stream, _CLIENT)
        elif frame_type == _RST_STREAM:
            self._reset(stream_id, _CLIENT)
        elif frame_type == _SETTINGS and self.client_settings is None and not flags & _ACK:
            self.client_settings = payload

    def _server_frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        if frame_type == _HEADERS:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.responded = True
            if stream.status < 200:  # not yet, or only an interim 1xx: this may be the final response
                start = 0
                if flags & _PADDED:
                    start += 1
                if flags & _PRIORITY:
                    start += 5
                stream.status = read_status(payload[start:])
            if flags & _END_STREAM:
                self._ended(stream, _SERVER)
        elif frame_type == _DATA:
            if flags & _END_STREAM:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    self._ended(stream, _SERVER)
        elif frame_type == _RST_STREAM:
            self._reset(stream_id, _SERVER)

    def _ended(self, stream: H2Stream, side: str) -> None:
        if side == _CLIENT:
            stream.client_ended = True
        else:
            stream.server_ended = True
        if stream.client_ended and stream.server_ended:
            self._close_stream(stream)

    def _reset(self, stream_id: int, side: str) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.reset_by = side
            self._close_stream(stream)

    def _close_stream(self, stream: H2Stream) -> None:
        del self.streams[stream.stream_id]
        if stream.exchange is not None:
            stream.exchange.h2c_stream_finished(stream)
        else:
            self.server.handler.stream_closed(stream)

    def _pipe_closed(self) -> None:
        """The connection is gone: every stream still open ends with it."""
        self._closed = True
        for stream in list(self.streams.values()):
            if stream.reset_by is None:
                stream.reset_by = _SERVER if stream.client_ended else _CLIENT
            self._close_stream(stream)
        self.server.connection_closed(self)


class _Held(asyncio.Protocol):
    """Keeps what a connection sends until a pipe takes it over: an h2c server speaks first (its SETTINGS
    frame), possibly before the connecting coroutine resumes; a client's first request is read this way."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.arrived = asyncio.Event()
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        self.arrived.set()

    def eof_received(self) -> bool:
        self.lost = True
        self.arrived.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.arrived.set()


class H2cTunnel:
    """A client connection that opened with the h2c preface, waiting for the handler to pick its upstream.

    The handler's `h2c_connection(tunnel)` must call `forward(address)` (or `close()`), at once or after
    `await read_request()` (to route by the first request's headers); until then the client is not read
    and what it sent so far is held.
    """

    def __init__(self, server: RelayServer, client: asyncio.Transport, received: bytes) -> None:
        self.server = server
        self.client = client
        self.relay = H2cRelay(server, client)
        self._received = received
        self._answered_preface = False
        client.pause_reading()

    async def read_request(self, timeout_s: float, max_bytes: int) -> dict[bytes, bytes] | None:
        """The first request's header fields (decoded, lower-case names, pseudo-headers included), or None
        when the client closes, sends more than `max_bytes` first, or takes longer than `timeout_s`.

        Answers the client's preface with an empty SETTINGS frame first (a client may wait for it before
        sending a request: Go's gRPC does); the client's ACK of it is not forwarded. The bytes read are
        forwarded unchanged later: the upstream decodes the header block itself, from the same HPACK state.
        """
        collector = _Held()
        self.client.set_protocol(collector)
        self.client.write(_EMPTY_SETTINGS)
        self._answered_preface = True
        self.client.resume_reading()
        received = self._received
        try:
            async with asyncio.timeout(timeout_s):
                while (block := _first_header_block(received)) is None:
                    if len(received) > max_bytes or collector.lost:
                        return None
                    collector.arrived.clear()
                    await collector.arrived.wait()
                    received += b"".join(collector.received)
                    collector.received.clear()
        except TimeoutError:
            return None
        finally:
            self._received = received
            if not self.client.is_closing():
                self.client.pause_reading()
        try:
            fields = Decoder().decode(block, raw=True)
        except HPACKError:
            return None
        return {bytes(name).lower(): bytes(value) for name, value in fields}

    def forward(self, address: Address, max_streams: int = 0, add_setting: tuple[int, int] | None = None) -> None:
        """Connect to `address` and relay the connection there; if the upstream cannot be reached the
        client sees the connection close. For `max_streams` and `add_setting`, see `forward_now`."""

        async def forward() -> None:
            if not await self.forward_now(address, max_streams, add_setting):
                self.close()  # as from an unreachable server

        asyncio.get_running_loop().create_task(forward())

    async def forward_now(
        self, address: Address, max_streams: int = 0, add_setting: tuple[int, int] | None = None,
        connect_timeout_s: float | None = None,
    ) -> bool:
        """Connect to `address` and relay the connection there: True once relaying (or the client is gone
        meanwhile); False, with the tunnel left as it was (forward it elsewhere or close it), when the
        upstream refuses or does not answer within `connect_timeout_s`.

        `max_streams` > 0 caps the streams the client may open at once (see `H2cRelay.start`);
        `add_setting` (identifier, value) is put first in the client's first SETTINGS frame (a mark for
        the next hop: peers ignore unknown settings, RFC 9113 6.5.2)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout_s):
                upstream, held = await loop.create_connection(_Held, address[0], address[1])
        except OSError:  # TimeoutError included
            return False
        if self.client.is_closing():
            upstream.close()
            self.close()
            return True
        setting = b"" if add_setting is None else add_setting[0].to_bytes(2, "big") + add_setting[1].to_bytes(4, "big")
        received, self._received = self._received, b""
        self.relay.start(
            upstream, to_upstream=received, to_client=b"".join(held.received), max_streams=max_streams,  # type: ignore[arg-type]
            add_setting=setting, drop_ack=self._answered_preface,
        )
        return True

    def close(self) -> None:
        self.client.close()
        self.server.connection_closed(self.relay)


def _first_header_block(received: bytes) -> bytes | None:
    """The complete header block of the first request in `received` (the client's bytes from the
    preface on), or None while it is incomplete."""
    pos = len(PREFACE)
    block = b""
    in_headers = False
    while pos + 9 <= len(received):
        length = int.from_bytes(received[pos : pos + 3], "big")
        frame_type, flags = received[pos + 3], received[pos + 4]
        end = pos + 9 + length
        if end > len(received):
            return None
        payload = received[pos + 9 : end]
        if frame_type == _HEADERS or (in_headers and frame_type == _CONTINUATION):
            if frame_type == _HEADERS:
                in_headers = True
                start, stop = 0, len(payload)
                if flags & _PADDED:
                    start, stop = 1, len(payload) - payload[0] if payload else 0
                if flags & _PRIORITY:
                    start += 5
                payload = payload[start:stop]
            block += payload
            if flags & _END_HEADERS:
                return block
        pos = end
    return None
