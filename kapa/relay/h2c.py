"""HTTP/2 cleartext (h2c, and so gRPC) relayed at frame level: bytes pass unchanged, only the 9-byte frame
headers (and the first bytes of HEADERS and SETTINGS payloads) are read, to count each stream as one request.

Changes are made between two frames, never inside one, and never to an HPACK block:

- SETTINGS. The relay answers the client's preface with its own SETTINGS frame (carrying the stream limit,
  if any) before relaying the app's, so it may speak to the client from the start; the client's ACKs of
  the relay's own SETTINGS are not forwarded. With a stream limit, SETTINGS_MAX_CONCURRENT_STREAMS in the
  app's SETTINGS is held to it; a hop before may put a mark first in the client's first SETTINGS.
- RST_STREAM, to both ends, of a stream the handler cancels (`H2Stream.cancel`).
- Refused streams. With a stream limit, a HEADERS frame that opens a stream beyond it is answered with
  RST_STREAM (REFUSED_STREAM: safe to retry, RFC 9113 5.1.2 and 8.7) and none of the stream's frames reach
  the app; the DATA it carried is given back to the client's connection window (WINDOW_UPDATE), since the
  app, which never sees it, never will. The app's HPACK decoder then misses whatever that header block
  added to the client's dynamic table, so the relay asks the client to start its table afresh (SETTINGS
  HEADER_TABLE_SIZE 0, then back to the app's size: RFC 7541 4.2 makes the client's next block begin with
  a table size update to 0, which empties the app's table too) and refuses every header block until one
  begins that way. Nothing is re-encoded.
- GOAWAY. ENHANCE_YOUR_CALM, and the connection closed, when the client resets (or has refused) more than
  MAX_EARLY_RESETS streams that had no response yet within EARLY_RESET_WINDOW_S: the HTTP/2 rapid-reset
  attack (CVE-2023-44487) costs the app a stream per reset and the client nothing, and a relay that keeps
  no stream waiting cannot slow it down otherwise. NO_ERROR when the connection is closed idle (`expire`)
  or at shutdown.

A stream is opened by the client's first HEADERS frame on a new odd stream id. It counts as a request at
the app (`handler.stream_opened` ... `stream_closed`) from the read that completes its header block (the
last byte of the frame with END_HEADERS: only then does the app start the request) until the app has ended
its side (END_STREAM), either end or the relay resets it, or the connection ends: once the app has sent its
whole response the request is over for the app, whether or not the client has ended its own side. A reset
ends it once its frame is whole, as the app takes it; the relay's own reaches the app only between two of
the client's frames, and the stream counts until then. A stream reset in the same read that completed its
header block never reaches the handler: it took no time at the app. For the stream limit the relay counts
streams as RFC 9113 5.1.2 does (and so as the client does): until both sides ended it or either reset it.
A RST_STREAM frame whose length is not 4 is a connection error (RFC 9113 6.4): GOAWAY (FRAME_SIZE_ERROR)
and the close, from the relay, for the app would wait for the rest of a longer one.

The response status is read from the first bytes of the server's HEADERS block when HPACK encodes it in the
usual way (a static-table index, or a literal with the `:status` name); a status the encoder put in its
dynamic table cannot be read without decoding every header block, and is reported as 0. To route a
connection, a handler may read its first request's header block (`H2cTunnel.read_request`), decoded once
with a fresh HPACK decoder and then forwarded unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from hpack import Decoder
from hpack.exceptions import HPACKError

from kapa.core.log import get_logger
from kapa.relay.tunnel import Pipe

if TYPE_CHECKING:
    from kapa.relay.http1 import ClientTimeouts, Exchange, RelayServer
    from kapa.relay.pool import Address

log = get_logger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: More client resets of unanswered streams (and refused streams) than this within EARLY_RESET_WINDOW_S
#: close the connection with GOAWAY (ENHANCE_YOUR_CALM). Netty's default bound against rapid reset (200
#: RST_STREAM frames per 30 s); a client cancelling calls at a sane pace stays far below it.
MAX_EARLY_RESETS = 200
EARLY_RESET_WINDOW_S = 30.0

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x7, 0x8, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_HEADER_TABLE_SIZE, _MAX_CONCURRENT_STREAMS = 0x1, 0x3
_NO_ERROR, _FRAME_SIZE_ERROR, _REFUSED_STREAM, _CANCEL, _ENHANCE_YOUR_CALM = 0x0, 0x6, 0x7, 0x8, 0xB
#: The one valid RST_STREAM payload length (RFC 9113 6.4): a 32-bit error code.
_RST_STREAM_LENGTH = 4
#: RFC 9113 6.5.2: the HPACK table size a peer may use until told otherwise.
_DEFAULT_HEADER_TABLE_SIZE = 4096
#: An HPACK dynamic table size update to 0 (RFC 7541 6.3): a header block that begins with it refers to
#: nothing an earlier block added.
_TABLE_SIZE_ZERO = 0x20
#: Payload bytes of a HEADERS frame looked at (flags' padding and priority fields, then the block's start).
_HEADERS_LOOKED_AT = 64
#: A SETTINGS frame is read whole up to this size (the smallest SETTINGS_MAX_FRAME_SIZE, RFC 9113 4.2); a
#: longer one is an error for the peer to answer, and passes unread.
_MAX_SETTINGS_READ = 16384
#: Refused streams whose late frames the relay remembers to drop; beyond, the oldest is forgotten (if the app
#: has seen a later stream, its frames then reach the app as frames of a closed stream, which it ignores or
#: answers with RST_STREAM).
_MAX_REFUSED_REMEMBERED = 256
#: HPACK static table indexes 8..14 are `:status` with these values (RFC 7541 appendix A).
_STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}
_CLIENT, _SERVER, _PROXY = "client", "server", "proxy"

_T = TypeVar("_T")


def _frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((frame_type, flags)) + stream_id.to_bytes(4, "big") + payload


def _settings(*pairs: tuple[int, int]) -> bytes:
    return _frame(_SETTINGS, 0, 0, b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in pairs))


def _rst_stream(stream_id: int, error_code: int) -> bytes:
    return _frame(_RST_STREAM, 0, stream_id, error_code.to_bytes(4, "big"))


class H2Stream:
    """One HTTP/2 request/response through the relay."""

    __slots__ = (
        "stream_id", "started_at", "status", "responded", "reset_by", "client_ended", "server_ended", "tag",
        "exchange", "connection", "finished", "announced",
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
        #: No longer at the app (see the module docstring); reported to the handler if it was announced.
        self.finished = False
        #: Reported to the handler (`stream_opened`).
        self.announced = False

    def cancel(self, status: int) -> None:
        """End the stream from the relay: RST_STREAM (CANCEL) to both ends, recorded with `status`. The handler
        hears `stream_closed` once the app has the reset (between two of the client's frames), or has ended the
        stream itself, or the connection is gone."""
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


def _block_start(flags: int, payload: bytes) -> bytes:
    """The first byte of the header block in a HEADERS payload (after its padding length and priority)."""
    start = (1 if flags & _PADDED else 0) + (5 if flags & _PRIORITY else 0)
    return payload[start : start + 1]


#: Called per frame with (type, flags, stream id, payload length, payload looked at); True drops the frame.
OnFrame = Callable[[int, int, int, int, bytes], bool]


class _FrameStream:
    """One direction of an h2c connection: follows frame boundaries, asks `on_frame` about each frame, and
    returns the bytes to forward for each chunk received.

    `on_frame` sees each frame once its header and the part of its payload looked at are in: the first 64
    bytes of a HEADERS payload, all of a SETTINGS payload (up to 16 KiB), all of a RST_STREAM payload of the
    valid length (a reset is seen when the peer can act on it); other payloads are not looked at and pass as
    they arrive. During `on_frame`, `frame_end` is where that frame ends in the bytes fed (`received`), so
    the caller can tell when the peer has it whole. When it returns True the whole frame is dropped, however
    many chunks it spans.
    Forwarded bytes are otherwise the received ones, with these changes: with `max_streams`, every SETTINGS
    frame (not an ACK) has SETTINGS_MAX_CONCURRENT_STREAMS held to at most that value; `add_setting` (6
    bytes: identifier, value) goes first into the first SETTINGS frame; whole frames given to `insert` go
    out between two frames. Only the part of a frame looked at is held back until it is complete.
    """

    __slots__ = (
        "_skip", "_partial", "_on_frame", "_max_streams", "_inserts", "_sent_ahead", "_add_setting", "_dropping",
        "_feeding", "received", "frame_end",
    )

    def __init__(self, on_frame: OnFrame, skip: int = 0, max_streams: int = 0, add_setting: bytes = b"") -> None:
        #: Payload bytes of the current frame still to pass (or of the client preface, at the start).
        self._skip = skip
        #: The start of a frame not yet forwarded: an incomplete header, or a part to look at.
        self._partial = b""
        self._on_frame = on_frame
        self._max_streams = max_streams
        self._inserts: list[bytes] = []
        #: Leading bytes of `_partial` that went out already (see `already_sent`).
        self._sent_ahead = 0
        self._add_setting = add_setting
        #: The payload bytes still to skip belong to a dropped frame.
        self._dropping = False
        #: Inside `feed` (in `on_frame`): bytes before the current frame have not gone out yet.
        self._feeding = False
        #: Bytes fed so far.
        self.received = 0
        #: Offset in the bytes fed of the end of the frame `on_frame` is asked about.
        self.frame_end = 0

    def at_boundary(self) -> bool:
        """True when the bytes forwarded so far end with a whole frame: a frame written now lands between two."""
        return (self._skip == 0 or self._dropping) and not self._sent_ahead and not self._feeding

    def insert(self, frame: bytes) -> None:
        """Forward `frame` at the next boundary (call only when not `at_boundary`; else write it at once)."""
        self._inserts.append(frame)

    @property
    def inserting(self) -> bool:
        """Frames given to `insert` still wait for a boundary."""
        return bool(self._inserts)

    def already_sent(self, data: bytes) -> None:
        """Follow `data` that was forwarded before this stream existed (after an upgrade's 101); none of its
        frames may be dropped."""
        self.feed(data)
        self._sent_ahead = len(self._partial)

    def feed(self, data: bytes) -> bytes:
        """Take `data` received; return what to forward now."""
        skip = self._skip
        start = self.received - len(self._partial)  # the offset of data[0] once the partial frame is put first
        self.received += len(data)
        if skip and not self._partial and skip > len(data):  # inside a long payload: nothing to look at
            self._skip = skip - len(data)
            return b"" if self._dropping else data
        if self._partial:
            data = self._partial + data
            self._partial = b""
        sent_ahead, self._sent_ahead = self._sent_ahead, 0  # leading bytes forwarded already
        size = len(data)
        pos = skip
        run_start = skip if self._dropping else 0  # data[run_start:pos] goes out unchanged
        self._dropping = False
        self._feeding = True
        out: list[bytes] | None = None
        while True:
            if pos > size:
                self._skip = pos - size
                pos = size
                break
            self._skip = 0
            if self._inserts and pos >= sent_ahead:
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
            end = pos + 9 + length
            if frame_type == _HEADERS:
                looked_end = pos + 9 + min(length, _HEADERS_LOOKED_AT)
            elif (frame_type == _SETTINGS and length <= _MAX_SETTINGS_READ) or (
                frame_type == _RST_STREAM and length == _RST_STREAM_LENGTH
            ):
                looked_end = end
            else:
                looked_end = pos + 9
            if looked_end > size:
                break  # held until the part looked at is in
            stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            self.frame_end = start + end
            if self._on_frame(frame_type, flags, stream_id, length, data[pos + 9 : looked_end]):
                if out is None:
                    out = []
                out.append(data[run_start:pos])
                run_start = min(end, size)
                self._dropping = end > size
            elif frame_type == _SETTINGS and looked_end == end and not flags & _ACK:
                replacement = self._settings(data[pos:end])
                if replacement is not None:
                    if out is None:
                        out = []
                    out.append(data[run_start:pos])
                    out.append(replacement)
                    run_start = end
            pos = end
        self._feeding = False
        self._partial = data[pos:]
        if sent_ahead:
            if pos == 0:  # still the same incomplete frame start
                self._sent_ahead = sent_ahead
                return b""
            run_start = max(run_start, sent_ahead)
        if out is None:
            return data[run_start:pos] if run_start or pos < size else data
        out.append(data[run_start:pos])
        return b"".join(out)

    def _settings(self, frame: bytes) -> bytes | None:
        """What to forward instead of a SETTINGS frame (not an ACK), or None to forward it as it is."""
        replacement = self._clamp(frame) if self._max_streams else None
        if self._add_setting:
            frame = replacement or frame
            payload = self._add_setting + frame[9:]
            replacement = len(payload).to_bytes(3, "big") + frame[3:9] + payload
            self._add_setting = b""
        return replacement

    def _clamp(self, frame: bytes) -> bytes | None:
        """The frame with SETTINGS_MAX_CONCURRENT_STREAMS at most `max_streams`, or None if it has none
        above (the value in force stays the one the relay's own SETTINGS set)."""
        payload = bytearray(frame[9:])
        changed = False
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            if int.from_bytes(payload[offset : offset + 2], "big") == _MAX_CONCURRENT_STREAMS:
                value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
                if value > self._max_streams:
                    payload[offset + 2 : offset + 6] = self._max_streams.to_bytes(4, "big")
                    changed = True
        return frame[:9] + bytes(payload) if changed else None


class H2cRelay:
    """Relays one h2c connection and keeps its streams' books; see the module docstring."""

    def __init__(self, server: RelayServer, client: asyncio.Transport, upgraded: Exchange | None = None) -> None:
        self.server = server
        self.client = client
        #: Streams open in the sense of RFC 9113 5.1.2 (what the stream limit counts), by id.
        self.streams: dict[int, H2Stream] = {}
        self._last_client_stream = 0
        #: The last stream forwarded to the app (later ids are idle there: no frame of theirs may reach it).
        self._last_forwarded = 0
        self._pipe: Pipe | None = None
        #: The first bytes of the client's first SETTINGS payload (None before it): a hop before may have
        #: put its mark there (see H2cTunnel.forward's `add_setting`).
        self.client_settings: bytes | None = None
        #: Free for the handler.
        self.tag: object = None
        self._max_streams = 0
        #: Streams not yet finished (at the app): the connection is idle without any.
        self._at_app = 0
        #: Opened streams whose header block ends with a frame seen, and where that frame ends in the client's
        #: bytes: each is announced to the handler after the read that brings that byte (the app has then
        #: started the request).
        self._opened: deque[tuple[H2Stream, int]] = deque()
        #: The opened stream whose header block waits for its last CONTINUATION frame.
        self._open_block: H2Stream | None = None
        #: Streams the relay reset whose RST_STREAM waits for a boundary of the client's frames to reach the
        #: app: still at the app until it does (or the app ends them first).
        self._cancelling: dict[int, H2Stream] = {}
        #: Who sent each SETTINGS frame the client has not acknowledged yet, in the order it got them: True
        #: for the relay's own (whose ACK the app must not see), False for the app's.
        self._settings_sent: deque[bool] = deque()
        #: The app's SETTINGS_HEADER_TABLE_SIZE: what the client's table goes back to after a fresh start.
        self._app_table_size = _DEFAULT_HEADER_TABLE_SIZE
        #: Refused streams, whose late frames from the client are dropped.
        self._refused: dict[int, None] = {}
        #: The refused header block whose CONTINUATION frames are being dropped (0: none).
        self._dropping_block = 0
        #: A dropped header block may have changed the client's HPACK table: the app's no longer matches.
        self._hpack_diverged = False
        #: SETTINGS ACKs still due from the client before it has applied the last request to start its HPACK
        #: table afresh (0: none outstanding, or its fresh start was seen).
        self._acks_until_fresh = 0
        self._early_resets = 0
        self._early_resets_since = 0.0
        #: Closed by the relay (rapid reset): nothing more is forwarded or reported.
        self._sent_away = False
        #: The sweep's record of an idle connection: the last stream id it saw then, and since when.
        self._idle_mark: int | None = None
        self._idle_since = 0.0
        self._client_frames = _FrameStream(self._client_frame, skip=len(PREFACE))
        self._server_frames = _FrameStream(self._server_frame)
        if upgraded is not None:
            # RFC 7540 3.2: the request that carried `Upgrade: h2c` becomes stream 1, half-closed by the client.
            stream = H2Stream(1, upgraded.started_at)
            stream.client_ended = True
            stream.exchange = upgraded
            stream.announced = True
            self.streams[1] = stream
            self._last_client_stream = self._last_forwarded = 1
            self._at_app = 1

    @property
    def idle(self) -> bool:
        """No stream at the app on a relaying connection. A connection still waiting for its upstream (held
        by the activator, or connecting) carries a request not yet counted as a stream: not idle."""
        return self._pipe is not None and self._at_app == 0

    def sent_own_settings(self) -> None:
        """The relay has written a SETTINGS frame of its own to the client: its ACK is not forwarded."""
        self._settings_sent.append(True)

    def start(
        self, upstream: asyncio.Transport, to_upstream: bytes = b"", to_client: bytes = b"", upstream_sent: bytes = b"",
        max_streams: int = 0, add_setting: bytes = b"",
    ) -> None:
        """Relay between the client and a connected upstream transport. `to_upstream`, `to_client`: bytes
        not yet forwarded; `upstream_sent`: upstream bytes already forwarded to the client (only scanned).
        `max_streams` > 0: at most that many streams at once (the relay's own SETTINGS told the client;
        streams beyond are refused); only before the upstream's first SETTINGS went out, so not after an
        upgrade. `add_setting`: see `_FrameStream` (client to upstream)."""
        if upstream_sent:
            self._server_frames.already_sent(upstream_sent)
        elif max_streams:
            self._max_streams = max_streams
            self._server_frames = _FrameStream(self._server_frame, max_streams=max_streams)
        if add_setting:
            self._client_frames = _FrameStream(self._client_frame, skip=len(PREFACE), add_setting=add_setting)
        self._pipe = Pipe(
            self.client, upstream, self._pipe_closed,
            filter_client=self._from_client, filter_upstream=self._server_frames.feed, half_close=False,
        )
        self._pipe.start(to_upstream, to_client)

    def cancel(self, stream: H2Stream, status: int) -> None:
        """RST_STREAM (CANCEL) to the client and the upstream, each between two frames, and close the books
        of `stream` with `status`. Frames either end sent meanwhile are theirs to ignore (RFC 9113 5.1)."""
        if self.streams.get(stream.stream_id) is not stream or self._pipe is None:
            return
        frame = _rst_stream(stream.stream_id, _CANCEL)
        self._to_client(frame)
        stream.status = status
        stream.reset_by = _PROXY
        del self.streams[stream.stream_id]  # closed for the client, and so for the stream limit
        if self._client_frames.at_boundary():
            self._pipe.upstream_end.transport.write(frame)
            self._finish(stream)
        else:  # the client is inside a frame: the app serves the stream until that frame is through
            self._client_frames.insert(frame)
            self._cancelling[stream.stream_id] = stream

    def expire(self, now: float, timeouts: ClientTimeouts) -> None:
        """Called by the relay's sweep: send away (GOAWAY NO_ERROR, then close, freeing the app connection)
        a connection that has had no stream at the app for `timeouts.idle_s`, as an HTTP/2 server's idle
        timeout does; the client opens a new connection when it has a request again."""
        if not self.idle:
            self._idle_mark = None
            return
        if self._last_client_stream != self._idle_mark:  # idle since this sweep (a stream may have come and gone)
            self._idle_mark, self._idle_since = self._last_client_stream, now
            return
        if now - self._idle_since >= timeouts.idle_s:
            self.close()

    def close(self) -> None:
        """Close the connection; the client is told with GOAWAY (NO_ERROR) when a frame can go out now."""
        if self._pipe is None:
            self.client.close()
            return
        self._send_away(_NO_ERROR)

    # --- frame bookkeeping ------------------------------------------------------------------------------

    def _from_client(self, data: bytes) -> bytes:
        """The client's bytes to forward; streams whose header block they complete are announced to the
        handler once all are read, and streams whose reset they carry to the app are finished."""
        client_frames = self._client_frames
        forward = client_frames.feed(data)
        if self._sent_away:
            return b""
        opened = self._opened
        while opened and opened[0][1] <= client_frames.received:
            stream = opened.popleft()[0]
            if not stream.finished:  # a stream reset in the same read never reached the handler
                stream.announced = True
                self.server.handler.stream_opened(stream)
        if self._cancelling and not client_frames.inserting:
            cancelled, self._cancelling = self._cancelling, {}
            for stream in cancelled.values():
                self._finish(stream)
        return forward

    def _client_frame(self, frame_type: int, flags: int, stream_id: int, length: int, payload: bytes) -> bool:
        if self._sent_away:
            return True
        if frame_type == _RST_STREAM and length != _RST_STREAM_LENGTH:  # see the module docstring
            self._sent_away = True
            self._send_away(_FRAME_SIZE_ERROR)
            return True
        if frame_type == _HEADERS:
            return self._client_headers(flags, stream_id, payload)
        if frame_type == _CONTINUATION:
            if stream_id != self._dropping_block:
                block = self._open_block
                if block is not None and block.stream_id == stream_id and flags & _END_HEADERS:
                    self._opened.append((block, self._client_frames.frame_end))
                    self._open_block = None
                return False
            if flags & _END_HEADERS:
                self._dropping_block = 0
            return True
        if stream_id & 1 and stream_id not in self.streams and (
            stream_id in self._refused or stream_id > self._last_forwarded
        ):
            # A client stream the app never saw (refused): on one above any it saw, a frame is a protocol
            # error there.
            if frame_type == _DATA and length:
                # Counted against the client's connection window (RFC 9113 6.9), never given back by the app.
                self._to_client(_frame(_WINDOW_UPDATE, 0, 0, length.to_bytes(4, "big")))
            elif frame_type == _RST_STREAM:
                self._refused.pop(stream_id, None)  # the client's last frame on it (RFC 9113 5.1)
            return True
        if frame_type == _DATA:
            if flags & _END_STREAM:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    self._ended(stream, _CLIENT)
        elif frame_type == _RST_STREAM:
            stream = self.streams.get(stream_id)
            if stream is not None:
                if not stream.responded:
                    self._early_reset()
                self._reset(stream, _CLIENT)
        elif frame_type == _SETTINGS:
            if flags & _ACK:
                if self._acks_until_fresh:
                    # Once applied, the client's next block must start afresh; one that does not is refused
                    # and the client asked again (python-hyper's hpack drops the signal when a later SETTINGS
                    # repeats the table size in force).
                    self._acks_until_fresh -= 1
                return bool(self._settings_sent) and self._settings_sent.popleft()
            if self.client_settings is None:
                self.client_settings = payload
        return False

    def _client_headers(self, flags: int, stream_id: int, payload: bytes) -> bool:
        """Book a client HEADERS frame; True when it is not to reach the app (see the module docstring)."""
        fresh_table = _block_start(flags, payload) == bytes((_TABLE_SIZE_ZERO,))
        stream = self.streams.get(stream_id)
        opens = stream is None and bool(stream_id & 1) and stream_id > self._last_client_stream
        if opens:
            self._last_client_stream = stream_id
            if (self._max_streams and len(self.streams) >= self._max_streams) or (
                self._hpack_diverged and not fresh_table
            ):
                self._refuse(stream_id, flags, fresh_table)
                return True
        elif (self._hpack_diverged and not fresh_table) or stream_id in self._refused:
            # Trailers the app could not decode, or of a stream it never saw: kept from it.
            self._drop_block(stream_id, flags, fresh_table)
            if stream is not None:
                self.cancel(stream, 502)  # its request cannot be completed
            return True
        if fresh_table:
            self._hpack_diverged = False
            self._acks_until_fresh = 0
        if opens:
            stream = H2Stream(stream_id, time.monotonic(), self)
            self.streams[stream_id] = stream
            self._last_forwarded = stream_id
            self._at_app += 1
            if flags & _END_HEADERS:
                self._opened.append((stream, self._client_frames.frame_end))
            else:
                self._open_block = stream
        elif stream is None:
            return False  # trailers of a closed stream, or a protocol error the app will answer
        if flags & _END_STREAM:
            self._ended(stream, _CLIENT)
        return False

    def _refuse(self, stream_id: int, flags: int, fresh_table: bool) -> None:
        """RST_STREAM (REFUSED_STREAM) to the client; none of the stream's frames will reach the app."""
        self._refused[stream_id] = None
        if len(self._refused) > _MAX_REFUSED_REMEMBERED:
            del self._refused[next(iter(self._refused))]
        # The request to start the HPACK table afresh goes first: a client that retries on the reset has it.
        self._drop_block(stream_id, flags, fresh_table)
        self._to_client(_rst_stream(stream_id, _REFUSED_STREAM))
        self._early_reset()

    def _drop_block(self, stream_id: int, flags: int, fresh_table: bool) -> None:
        """A header block is kept from the app, so the app's HPACK table may no longer match the client's:
        ask the client to start its table afresh, unless asked already and not yet applied; see the module
        docstring."""
        if not flags & _END_HEADERS:
            self._dropping_block = stream_id
        self._hpack_diverged = True
        if fresh_table:  # the fresh start asked for was in this very block: ask again
            self._acks_until_fresh = 0
        if not self._acks_until_fresh:
            # Two frames: a client applies each SETTINGS frame's values at once, so its encoder sees the
            # size go to 0 and back (one frame with both could leave it unchanged).
            self._to_client(_settings((_HEADER_TABLE_SIZE, 0)) + _settings((_HEADER_TABLE_SIZE, self._app_table_size)))
            self._settings_sent.extend((True, True))
            self._acks_until_fresh = len(self._settings_sent)

    def _early_reset(self) -> None:
        """Count a stream the client reset before any response, or had refused; past the limit, send it away."""
        now = time.monotonic()
        if now - self._early_resets_since > EARLY_RESET_WINDOW_S:
            self._early_resets_since, self._early_resets = now, 0
        self._early_resets += 1
        if self._early_resets > MAX_EARLY_RESETS and not self._sent_away and self._pipe is not None:
            self._sent_away = True
            log.warning(
                "h2c client reset streams too fast; connection closed (GOAWAY ENHANCE_YOUR_CALM)",
                resets=self._early_resets, window_s=EARLY_RESET_WINDOW_S,
            )
            self._send_away(_ENHANCE_YOUR_CALM)

    def _server_frame(self, frame_type: int, flags: int, stream_id: int, length: int, payload: bytes) -> bool:
        if frame_type == _HEADERS:
            stream = self.streams.get(stream_id)
            if stream is None:
                if flags & _END_STREAM:
                    self._ended_before_cancel(stream_id)
                return False
            stream.responded = True
            if stream.status < 200:  # not yet, or only an interim 1xx: this may be the final response
                start = (1 if flags & _PADDED else 0) + (5 if flags & _PRIORITY else 0)
                stream.status = read_status(payload[start:])
            if flags & _END_STREAM:
                self._ended(stream, _SERVER)
        elif frame_type == _DATA:
            if flags & _END_STREAM:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    self._ended(stream, _SERVER)
                else:
                    self._ended_before_cancel(stream_id)
        elif frame_type == _RST_STREAM:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._reset(stream, _SERVER)
            else:
                self._ended_before_cancel(stream_id)
        elif frame_type == _SETTINGS and not flags & _ACK:
            self._settings_sent.append(False)
            for offset in range(0, len(payload) - 5, 6):
                if int.from_bytes(payload[offset : offset + 2], "big") == _HEADER_TABLE_SIZE:
                    self._app_table_size = int.from_bytes(payload[offset + 2 : offset + 6], "big")
        return False

    def _to_client(self, frame: bytes) -> None:
        """Write a frame of the relay's own to the client, between two of the app's."""
        if self.client.is_closing():
            return
        if self._server_frames.at_boundary():
            self.client.write(frame)
        else:
            self._server_frames.insert(frame)

    def _send_away(self, error_code: int) -> None:
        """GOAWAY to the client if a frame can go out now (else the close alone tells), and close."""
        assert self._pipe is not None
        if self._server_frames.at_boundary() and not self.client.is_closing():
            last = self._last_forwarded.to_bytes(4, "big")  # streams after it were not processed
            self.client.write(_frame(_GOAWAY, 0, 0, last + error_code.to_bytes(4, "big")))
        self._pipe.close()

    def _ended(self, stream: H2Stream, side: str) -> None:
        if side == _CLIENT:
            stream.client_ended = True
        else:
            stream.server_ended = True
            self._finish(stream)  # the app's response is complete: the request is over at the app
        if stream.client_ended and stream.server_ended:
            del self.streams[stream.stream_id]

    def _ended_before_cancel(self, stream_id: int) -> None:
        """The app ended a stream whose reset by the relay has not reached it yet: no longer at the app."""
        stream = self._cancelling.pop(stream_id, None)
        if stream is not None:
            self._finish(stream)

    def _reset(self, stream: H2Stream, side: str) -> None:
        if not stream.finished:
            stream.reset_by = side
            self._finish(stream)
        del self.streams[stream.stream_id]

    def _finish(self, stream: H2Stream) -> None:
        """The stream is no longer at the app: tell whoever counted it, once."""
        if stream.finished:
            return
        stream.finished = True
        self._at_app -= 1
        if stream.exchange is not None:
            stream.exchange.h2c_stream_finished(stream)
        elif stream.announced:
            self.server.handler.stream_closed(stream)

    def _pipe_closed(self) -> None:
        """The connection is gone: every stream still at the app ends with it."""
        for stream in list(self.streams.values()):
            if not stream.finished:
                stream.reset_by = _SERVER if stream.client_ended else _CLIENT
                self._finish(stream)
        self.streams.clear()
        cancelled, self._cancelling = self._cancelling, {}
        for stream in cancelled.values():
            self._finish(stream)
        self.server.connection_closed(self)


class _Held(asyncio.Protocol):
    """Keeps what a connection sends until a pipe takes it over: an h2c server speaks first (its SETTINGS
    frame), possibly before the connecting coroutine resumes; a client's first request is read this way,
    and a held client is watched."""

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

    def take(self) -> bytes:
        """What arrived since the last call."""
        received = b"".join(self.received)
        self.received.clear()
        return received

    async def more(self, unless: asyncio.Future[Any] | None = None) -> bytes:
        """Wait until more bytes arrive or the connection ends (or `unless` is done first); return them."""
        self.arrived.clear()
        if unless is None:
            await self.arrived.wait()
        else:
            arrival = asyncio.ensure_future(self.arrived.wait())
            try:
                await asyncio.wait((arrival, unless), return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()
        return self.take()


class _ClientStreams:
    """The client's streams on a held connection, from its frames: whether it still wants any."""

    def __init__(self) -> None:
        self.last = 0
        self.open: set[int] = set()

    def frame(self, frame_type: int, flags: int, stream_id: int, length: int, payload: bytes) -> bool:
        if frame_type == _HEADERS and stream_id & 1 and stream_id > self.last:
            self.last = stream_id
            self.open.add(stream_id)
        elif frame_type == _RST_STREAM and length == _RST_STREAM_LENGTH:
            # Of another length it resets nothing: a connection error, answered once the relay has the client.
            self.open.discard(stream_id)
        return False

    @property
    def all_reset(self) -> bool:
        return self.last > 0 and not self.open


class H2cTunnel:
    """A client connection that opened with the h2c preface, waiting for the handler to pick its upstream.

    The handler's `h2c_connection(tunnel)` must call `forward(address)` (or `close()`), at once or after
    `await read_request()` (to route by the first request's headers) and maybe `await hold(...)` (to wait
    for an upstream); until then the client is not read and what it sent so far is held.
    """

    def __init__(self, server: RelayServer, client: asyncio.Transport, received: bytes) -> None:
        self.server = server
        self.client = client
        self.relay = H2cRelay(server, client)
        self._received = received
        self._collector: _Held | None = None
        client.pause_reading()

    async def read_request(self, timeout_s: float, max_bytes: int) -> dict[bytes, bytes] | None:
        """The first request's header fields (decoded, lower-case names, pseudo-headers included), or None
        when the client closes, sends more than `max_bytes` first, or takes longer than `timeout_s`.

        Answers the client's preface with an empty SETTINGS frame first (a client may wait for it before
        sending a request: Go's gRPC does). The bytes read are forwarded unchanged later: the upstream
        decodes the header block itself, from the same HPACK state.
        """
        collector = self._collector = _Held()
        self.client.set_protocol(collector)
        self._answer_preface(0)
        self.client.resume_reading()
        received = self._received
        try:
            async with asyncio.timeout(timeout_s):
                while (block := _first_header_block(received)) is None:
                    if len(received) > max_bytes or collector.lost:
                        return None
                    received += await collector.more()
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

    async def hold(self, waiting: Awaitable[_T], max_bytes: int) -> _T | None:
        """Await `waiting` (an upstream for the connection) while the client is read and watched (after
        `read_request`): None, with `waiting` cancelled, once the client has closed the connection or reset
        every stream it opened, for then there is nothing to forward (`close()` the tunnel). What the
        client sends meanwhile is kept for the upstream; past `max_bytes` it is no longer read (so no longer
        watched) until forwarded. Should `waiting` finish in the same instant the client gives up, its
        result is returned: the relay then sees the client's resets itself."""
        collector = self._collector
        assert collector is not None, "hold() after read_request()"
        task = asyncio.ensure_future(waiting)
        streams = _ClientStreams()
        frames = _FrameStream(streams.frame, skip=len(PREFACE))
        received = self._received + collector.take()
        frames.feed(received)
        if len(received) <= max_bytes:
            self.client.resume_reading()
        try:
            while not task.done():
                if collector.lost or streams.all_reset:
                    task.cancel()
                    await asyncio.wait((task,))  # the throttler gives back the place (or a slot granted just now)
                    return None if task.cancelled() else task.result()
                if len(received) > max_bytes:
                    self.client.pause_reading()
                    return await task
                more = await collector.more(unless=task)
                received += more
                frames.feed(more)
            return task.result()
        finally:
            task.cancel()  # if we are cancelled ourselves
            self._received = received
            if not self.client.is_closing():
                self.client.pause_reading()

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

        `max_streams` > 0 caps the streams the client may have open at once: it is told at once, in the
        relay's own SETTINGS, and streams beyond are refused (see `H2cRelay.start`); `add_setting`
        (identifier, value) is put first in the client's first SETTINGS frame (a mark for the next hop:
        peers ignore unknown settings, RFC 9113 6.5.2)."""
        if max_streams or self._collector is None:
            self._answer_preface(max_streams)
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
            upstream, to_upstream=received, to_client=held.take(), max_streams=max_streams,  # type: ignore[arg-type]
            add_setting=setting,
        )
        return True

    def close(self) -> None:
        self.client.close()
        self.server.connection_closed(self.relay)

    def _answer_preface(self, max_streams: int) -> None:
        """Write the relay's own SETTINGS to the client (with the stream limit, if any)."""
        self.client.write(_settings((_MAX_CONCURRENT_STREAMS, max_streams)) if max_streams else _settings())
        self.relay.sent_own_settings()


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
