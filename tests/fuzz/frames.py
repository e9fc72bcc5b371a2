"""HTTP/2 frames for the fuzzers' seeds and findings, written with hyperframe and a real HPACK encoder, so a
seed's header blocks decode at the app (raw bytes where a frame must be malformed)."""

from __future__ import annotations

from hpack import Encoder
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame, SettingsFrame

CANCEL = 0x8
SETTINGS_ACK = SettingsFrame(0, flags=["ACK"]).serialize()


def request(
    encoder: Encoder, stream_id: int, path: str = "/", end_stream: bool = True, padded: bool = False,
    priority: bool = False,
) -> bytes:
    """A HEADERS frame with a whole POST request head (END_HEADERS); `encoder` carries the HPACK table."""
    frame = HeadersFrame(stream_id, encoder.encode(
        [(":method", "POST"), (":scheme", "http"), (":authority", "app.fuzz"), (":path", path), ("x-trace", path)]
    ))
    if padded:
        frame.flags.add("PADDED")
        frame.pad_length = 3
    if priority:
        frame.flags.add("PRIORITY")
        frame.depends_on, frame.stream_weight = 0, 15
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def data(stream_id: int, body: bytes, end_stream: bool = True) -> bytes:
    return DataFrame(stream_id, body, flags=["END_STREAM"] if end_stream else []).serialize()


def reset(stream_id: int, error_code: int = CANCEL) -> bytes:
    return RstStreamFrame(stream_id, error_code).serialize()


def settings(table: int | None = None, streams: int | None = None) -> bytes:
    """A SETTINGS frame with HEADER_TABLE_SIZE `table` and MAX_CONCURRENT_STREAMS `streams`, where given."""
    values = {SettingsFrame.HEADER_TABLE_SIZE: table, SettingsFrame.MAX_CONCURRENT_STREAMS: streams}
    return SettingsFrame(0, {key: value for key, value in values.items() if value is not None}).serialize()


def raw(frame_type: int, flags: int, stream_id: int, payload: bytes, length: int | None = None) -> bytes:
    """A frame exactly as given, valid or not; `length` overrides the length field (a frame that lies)."""
    size = len(payload) if length is None else length
    return size.to_bytes(3, "big") + bytes((frame_type, flags)) + stream_id.to_bytes(4, "big") + payload
