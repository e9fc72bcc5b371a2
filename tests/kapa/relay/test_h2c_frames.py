"""The h2c frame stream forwards bytes unchanged except for the frame-level changes it is asked for (and the
frames it is told to drop), however the bytes are split into chunks."""

from __future__ import annotations

import pytest

from kapa.relay.h2c import PREFACE, _FrameStream

SETTINGS, HEADERS, DATA, RST_STREAM, CONTINUATION = 0x4, 0x1, 0x0, 0x3, 0x9
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 0x3, 0x4


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((frame_type, flags)) + stream_id.to_bytes(4, "big") + payload


def settings(*pairs: tuple[int, int], ack: bool = False) -> bytes:
    return frame(SETTINGS, 1 if ack else 0, 0, b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs))


def run(stream: _FrameStream, data: bytes, chunk: int) -> bytes:
    return b"".join(stream.feed(data[i : i + chunk]) for i in range(0, len(data), chunk))


def keep_all(frame_type: int, flags: int, stream_id: int, length: int, payload: bytes) -> bool:
    return False


def _frames_seen() -> tuple[list[tuple[int, int, int]], _FrameStream]:
    seen: list[tuple[int, int, int]] = []

    def on_frame(frame_type: int, flags: int, stream_id: int, length: int, payload: bytes) -> bool:
        seen.append((frame_type, flags, stream_id))
        return False

    return seen, _FrameStream(on_frame, max_streams=2)


BODY = frame(HEADERS, 0x4, 1, b"\x88") + frame(DATA, 0, 1, b"x" * 40_000) + settings(ack=True)


@pytest.mark.parametrize("chunk", [1, 5, 9, 10, 4096, 1_000_000])
def test_settings_are_clamped_in_place(chunk: int) -> None:
    seen, stream = _frames_seen()
    received = settings((INITIAL_WINDOW_SIZE, 65535), (MAX_CONCURRENT_STREAMS, 100)) + BODY + settings(
        (MAX_CONCURRENT_STREAMS, 1000)
    ) + settings((INITIAL_WINDOW_SIZE, 1)) + settings((MAX_CONCURRENT_STREAMS, 1))
    # A SETTINGS frame without the limit leaves the value in force alone (the relay's own SETTINGS set it);
    # a lower value stays.
    expected = settings((INITIAL_WINDOW_SIZE, 65535), (MAX_CONCURRENT_STREAMS, 2)) + BODY + settings(
        (MAX_CONCURRENT_STREAMS, 2)
    ) + settings((INITIAL_WINDOW_SIZE, 1)) + settings((MAX_CONCURRENT_STREAMS, 1))
    assert run(stream, received, chunk) == expected
    assert [t for t, _, _ in seen] == [SETTINGS, HEADERS, DATA, SETTINGS, SETTINGS, SETTINGS, SETTINGS]


@pytest.mark.parametrize("chunk", [1, 7, 100, 1_000_000])
def test_without_a_limit_bytes_pass_unchanged_after_the_preface(chunk: int) -> None:
    seen: list[int] = []
    def on_frame(frame_type: int, flags: int, stream_id: int, length: int, payload: bytes) -> bool:
        seen.append(frame_type)
        return False

    stream = _FrameStream(on_frame, skip=len(PREFACE))
    received = PREFACE + settings((MAX_CONCURRENT_STREAMS, 100)) + BODY
    assert run(stream, received, chunk) == received
    assert seen == [SETTINGS, HEADERS, DATA, SETTINGS]


def test_an_inserted_frame_goes_out_between_two_frames() -> None:
    stream = _FrameStream(keep_all)
    data_frame = frame(DATA, 0, 1, b"y" * 1000)
    reset = frame(RST_STREAM, 0, 3, (8).to_bytes(4, "big"))
    out = stream.feed(data_frame[:500])
    assert not stream.at_boundary()
    stream.insert(reset)
    out += stream.feed(data_frame[500:] + data_frame[:3])  # the next frame's header begins in the chunk
    assert stream.at_boundary()
    out += stream.feed(data_frame[3:])
    assert out == data_frame + reset + data_frame


def test_an_insert_waiting_for_a_boundary_goes_out_with_the_chunk_that_reaches_it() -> None:
    stream = _FrameStream(keep_all)
    data_frame = frame(DATA, 0, 1, b"y" * 100)
    reset = frame(RST_STREAM, 0, 3, (8).to_bytes(4, "big"))
    out = stream.feed(data_frame[:50])
    stream.insert(reset)
    out += stream.feed(data_frame[50:])  # ends exactly at the boundary: nothing else may follow for long
    assert out == data_frame + reset


def test_bytes_forwarded_before_the_stream_existed_are_not_sent_again() -> None:
    stream = _FrameStream(keep_all)
    frames = settings((INITIAL_WINDOW_SIZE, 1)) + frame(DATA, 0, 1, b"z" * 10)
    stream.already_sent(frames[:20])  # the SETTINGS frame and 5 bytes of the DATA frame's header
    assert not stream.at_boundary()
    assert stream.feed(frames[20:22]) == b""  # the header is still incomplete
    assert stream.feed(frames[22:]) == frames[20:]


@pytest.mark.parametrize("chunk", [1, 8, 64, 1_000_000])
def test_a_mark_goes_first_into_the_first_settings_only(chunk: int) -> None:
    mark = (0xF0AC).to_bytes(2, "big") + (1).to_bytes(4, "big")
    stream = _FrameStream(keep_all, skip=len(PREFACE), add_setting=mark)
    received = PREFACE + settings((INITIAL_WINDOW_SIZE, 9)) + BODY + settings((INITIAL_WINDOW_SIZE, 8))
    expected = PREFACE + settings((0xF0AC, 1), (INITIAL_WINDOW_SIZE, 9)) + BODY + settings((INITIAL_WINDOW_SIZE, 8))
    assert run(stream, received, chunk) == expected


def _drop_stream(dropped: int, seen: list[tuple[int, int, int]]) -> _FrameStream:
    def on_frame(frame_type: int, flags: int, stream_id: int, length: int, payload: bytes) -> bool:
        seen.append((frame_type, stream_id, length))
        return stream_id == dropped or (frame_type == SETTINGS and bool(flags & 1))

    return _FrameStream(on_frame)


KEPT = [
    frame(HEADERS, 0x0, 1, b"\x82" * 100), frame(CONTINUATION, 0x4, 1, b"\x84"), frame(DATA, 0x1, 1, b"a" * 70_000),
]
DROPPED = [
    frame(HEADERS, 0x4, 3, b"\x83" * 200), frame(DATA, 0x0, 3, b"b" * 50_000), settings(ack=True),
    frame(DATA, 0x1, 3, b""),
]


@pytest.mark.parametrize("chunk", [1, 9, 13, 100, 4096, 1_000_000])
def test_dropped_frames_vanish_whole_however_they_are_split(chunk: int) -> None:
    seen: list[tuple[int, int, int]] = []
    stream = _drop_stream(3, seen)
    received = KEPT[0] + DROPPED[0] + DROPPED[1] + KEPT[1] + DROPPED[2] + KEPT[2] + DROPPED[3]
    assert run(stream, received, chunk) == b"".join(KEPT)
    assert seen == [
        (HEADERS, 1, 100), (HEADERS, 3, 200), (DATA, 3, 50_000), (CONTINUATION, 1, 1), (SETTINGS, 0, 0),
        (DATA, 1, 70_000), (DATA, 3, 0),
    ]


def test_a_frame_inserted_while_one_is_dropped_goes_out_at_once() -> None:
    stream = _drop_stream(3, [])
    assert stream.feed(DROPPED[1][:100]) == b""
    assert stream.at_boundary()  # what went out ends with a whole frame
    assert stream.feed(DROPPED[1][100:] + KEPT[0]) == KEPT[0]


def test_a_headers_frame_is_looked_at_once_its_first_bytes_are_in() -> None:
    payloads: list[bytes] = []

    def on_frame(frame_type: int, flags: int, stream_id: int, length: int, payload: bytes) -> bool:
        payloads.append(payload)
        return False

    stream = _FrameStream(on_frame)
    headers = frame(HEADERS, 0x4, 1, bytes(range(100)))
    assert stream.feed(headers[:40]) == b""  # held: 31 of the 64 bytes looked at
    assert payloads == []
    assert stream.feed(headers[40:80]) == headers[:80]
    assert payloads == [bytes(range(64))]


def test_the_first_header_block_is_found_across_padding_priority_and_continuation() -> None:
    from kapa.relay.h2c import _first_header_block

    block = b"\x82\x86\x84\x41\x0fhello.default:80"
    padded = bytes((3,)) + (0).to_bytes(4, "big") + b"\x10" + block[:5] + b"\x00" * 3  # PADDED | PRIORITY
    received = PREFACE + settings() + frame(HEADERS, 0x8 | 0x20, 1, padded) + frame(0x9, 0x4, 1, block[5:])
    assert _first_header_block(received) == block
    assert _first_header_block(received[:-1]) is None
    assert _first_header_block(PREFACE + settings()) is None
