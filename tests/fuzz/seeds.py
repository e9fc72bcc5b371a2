"""The seed corpus of the fuzzers: one valid (or deliberately edgy) conversation per file, written by
`python -m tests.fuzz.seeds` into tests/fuzz/corpus/{http1,h2c}/.

Seeds give the fuzzer the shapes it would take long to find alone: each request framing, pipelining past
the queue bound, both upgrades with bytes after them, h2c with each frame type the relay reads, each
`Behaviour` of the handler, apps and client. h2c seeds hold frames only: the h2c fuzzer puts the preface
first (see `tests.fuzz.fuzz_h2c`).
"""

from __future__ import annotations

from hpack import Encoder
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame, PingFrame, WindowUpdateFrame

from kapa.relay.h2c import PREFACE
from tests.fuzz import CORPUS
from tests.fuzz.apps import Http1AppBehaviour
from tests.fuzz.frames import SETTINGS_ACK, data, request, reset, settings
from tests.fuzz.harness import Behaviour, ClientEnd, H2cMode, Policy, encode

_GET = b"GET /a HTTP/1.1\r\nHost: app.fuzz\r\n\r\n"
_TINY_GET = b"GET / HTTP/1.1\r\n\r\n"
_POST_HEAD = b"POST /upload HTTP/1.1\r\nHost: app.fuzz\r\nContent-Length: 10\r\n\r\n"
_CHUNKED_HEAD = b"POST /chunks HTTP/1.1\r\nHost: app.fuzz\r\nTransfer-Encoding: chunked\r\n\r\n"
_WEBSOCKET = (
    b"GET /ws HTTP/1.1\r\nHost: app.fuzz\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
_CONNECT = b"CONNECT tunnel.fuzz:443 HTTP/1.1\r\nHost: tunnel.fuzz:443\r\n\r\n"
_H2C_UPGRADE = (
    b"GET /h2 HTTP/1.1\r\nHost: app.fuzz\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
)
_DECLINES = Http1AppBehaviour(declines_upgrades=True)


def http1_seeds() -> dict[str, bytes]:
    plain = Behaviour()
    return {
        "get": encode(plain, _GET),
        "get_head_in_three_reads": encode(plain, _GET[:7], _GET[7:20], _GET[20:]),
        "post_content_length": encode(plain, _POST_HEAD + b"01234", b"56789"),
        "post_chunked_with_trailer": encode(
            plain, _CHUNKED_HEAD + b"4\r\nWiki\r\n5\r", b"\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
        ),
        "pipelined_three": encode(plain, _GET * 3),
        "pipelined_past_the_queue_bound": encode(plain, _TINY_GET * 70),
        "pipelined_behind_a_body": encode(plain, _POST_HEAD + b"0123456789" + _TINY_GET * 70),
        "websocket_accepted": encode(plain, _WEBSOCKET + b"\x81\x05hello", b"\x81\x05again"),
        "websocket_declined_smuggles": encode(Behaviour(app=_DECLINES), _WEBSOCKET + _GET.replace(b"/a", b"/smuggled")),
        "connect_accepted": encode(plain, _CONNECT + b"\x16\x03\x01 tls bytes"),
        "connect_declined": encode(Behaviour(app=_DECLINES), _CONNECT + _GET),
        "http10": encode(plain, b"GET /old HTTP/1.0\r\nHost: app.fuzz\r\n\r\n"),
        "http10_chunked_refused": encode(
            plain, b"POST /old HTTP/1.0\r\nHost: app.fuzz\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
        "head_chunked_response": encode(
            Behaviour(app=Http1AppBehaviour(chunked_response=True)),
            b"HEAD /h HTTP/1.1\r\nHost: app.fuzz\r\n\r\n" + _GET,
        ),
        "expect_continue": encode(
            plain, b"PUT /e HTTP/1.1\r\nHost: app.fuzz\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", b"abc"
        ),
        "absolute_form": encode(plain, b"GET http://app.fuzz/abs HTTP/1.1\r\nHost: app.fuzz\r\n\r\n"),
        "absolute_form_other_host": encode(plain, b"GET http://evil.fuzz/abs HTTP/1.1\r\nHost: app.fuzz\r\n\r\n"),
        "duplicate_host": encode(plain, b"GET /d HTTP/1.1\r\nHost: app.fuzz\r\nHost: evil.fuzz\r\n\r\n"),
        "bad_chunk_after_head": encode(plain, _CHUNKED_HEAD + b"4\r\nWiki\r\n", b"zz\r\nbad\r\n"),
        "h2c_upgrade": encode(plain, _H2C_UPGRADE + PREFACE + settings(), SETTINGS_ACK + request(Encoder(), 3)),
        "h2c_prior_knowledge": encode(plain, PREFACE[:10], PREFACE[10:] + settings() + request(Encoder(), 1)),
        "not_quite_the_preface": encode(plain, b"PRI * HTTP/1.1\r\n\r\n"),
        "half_close_after_request": encode(Behaviour(client_end=ClientEnd.HALF_CLOSE), _GET * 2),
        "half_close_inside_body": encode(Behaviour(client_end=ClientEnd.HALF_CLOSE), _POST_HEAD + b"012"),
        "reset_inside_body": encode(Behaviour(client_end=ClientEnd.RESET), _GET, _POST_HEAD + b"012"),
        "close_at_once": encode(Behaviour(client_end=ClientEnd.CLOSE_AT_ONCE), _GET * 3),
        "held_body": encode(Behaviour(policy=Policy.HOLD_BODY), _POST_HEAD + b"01234", b"56789" + _GET),
        "held_body_client_resets": encode(
            Behaviour(policy=Policy.HOLD_BODY, client_end=ClientEnd.RESET), _GET, _POST_HEAD + b"01234"
        ),
        "queued_body": encode(Behaviour(policy=Policy.QUEUE, set_header=True), _POST_HEAD + b"01234", b"56789"),
        "answered_by_the_handler": encode(Behaviour(policy=Policy.ANSWER_SOME), _GET * 2, _POST_HEAD + b"0123456789"),
        "head_timeout": encode(Behaviour(time_passes=True), _GET[:20]),
        "idle_keep_alive": encode(Behaviour(time_passes=True), _GET),
        "app_drops_then_replay": encode(Behaviour(app=Http1AppBehaviour(drops_some=True)), _GET, _GET, _GET),
        "app_closes_after_each": encode(
            Behaviour(app=Http1AppBehaviour(closes_after_response=True, interim_response=True)), _GET * 2, _GET
        ),
        "app_refuses_some": encode(
            Behaviour(app=Http1AppBehaviour(drops_some=True), app_refuses_some=True), _GET, _GET, _GET
        ),
        "app_malformed_response": encode(Behaviour(app=Http1AppBehaviour(malformed_some=True)), _GET, _GET, _GET),
        "app_close_delimited": encode(Behaviour(app=Http1AppBehaviour(close_delimited=True)), _GET, _GET),
        "shutdown_while_busy": encode(Behaviour(shutdown=True), _POST_HEAD + b"01234", b"56789" + _GET),
        "large_header": encode(plain, b"GET /big HTTP/1.1\r\nHost: app.fuzz\r\nX-Big: " + b"b" * 3000 + b"\r\n\r\n"),
    }


def h2c_seeds() -> dict[str, bytes]:
    plain = Behaviour()
    limit_1 = Behaviour(h2c_mode=H2cMode.LIMIT_1)
    one_request = settings() + request(Encoder(), 1)
    trailed = Encoder()
    seeds = {
        "get": encode(plain, one_request, SETTINGS_ACK),
        "body_split_mid_frame": encode(
            Behaviour(h2c_app_answers_at_once=True),
            settings() + request(Encoder(), 1, end_stream=False) + data(1, b"hello", end_stream=False)[:5],
            data(1, b"hello", end_stream=False)[5:], data(1, b"!"),
        ),
        "rapid_reset": encode(
            plain, settings() + b"".join(
                request(Encoder(), stream_id, end_stream=False) + reset(stream_id)
                for stream_id in range(1, 40, 2)
            ),
        ),
        "ping_window_goaway": encode(
            plain, settings(), PingFrame(0, b"12345678").serialize() + WindowUpdateFrame(0, 1000).serialize(),
            SETTINGS_ACK + GoAwayFrame(0, 0, 0).serialize(),
        ),
        "continuation": encode(plain, settings() + _continued_request(1)),
        "padded_priority": encode(plain, settings() + request(Encoder(), 1, padded=True, priority=True)),
        "trailers": encode(
            plain, settings() + request(trailed, 1, end_stream=False) + data(1, b"x", end_stream=False),
            _trailers(trailed, 1),
        ),
        "client_settings": encode(
            Behaviour(h2c_mode=H2cMode.LIMIT_2_MARKED), settings(table=0, streams=10) + SETTINGS_ACK,
            request(Encoder(), 1),
        ),
        "read_hold_forward": encode(
            Behaviour(h2c_mode=H2cMode.READ_HOLD_FORWARD), settings() + request(Encoder(), 1)[:12],
            request(Encoder(), 1)[12:], SETTINGS_ACK,
        ),
        "cancelled_streams": encode(
            Behaviour(cancel_streams=True), settings() + request(Encoder(), 1, end_stream=False),
            data(1, b"late"),
        ),
        "answered_before_client_ends": encode(
            Behaviour(h2c_app_answers_at_once=True, time_passes=True),
            settings() + request(Encoder(), 1, end_stream=False),
        ),
        "idle_connection": encode(Behaviour(time_passes=True), settings(), SETTINGS_ACK),
        "shutdown": encode(
            Behaviour(shutdown=True), settings() + request(Encoder(), 1, end_stream=False), data(1, b"!")
        ),
        "half_close": encode(Behaviour(client_end=ClientEnd.HALF_CLOSE), one_request),
        "reset_at_once": encode(Behaviour(client_end=ClientEnd.RESET), settings() + request(Encoder(), 1)),
    }
    # Beyond the stream limit, with header blocks that add to the HPACK table: refused blocks make the
    # relay ask the client to start its table afresh.
    growing = Encoder()
    seeds["refused_streams_hpack"] = encode(
        limit_1, settings() + b"".join(
            request(growing, stream_id, path=f"/p{stream_id}", end_stream=False) for stream_id in (1, 3, 5)
        ),
        SETTINGS_ACK + SETTINGS_ACK + data(1, b"done"),
    )
    return seeds


def _continued_request(stream_id: int) -> bytes:
    block = Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "app.fuzz"), (":path", "/c")])
    first = HeadersFrame(stream_id, block[:3], flags=["END_STREAM"]).serialize()
    return first + ContinuationFrame(stream_id, block[3:], flags=["END_HEADERS"]).serialize()


def _trailers(encoder: Encoder, stream_id: int) -> bytes:
    block = encoder.encode([("x-checksum", "1")])
    return HeadersFrame(stream_id, block, flags=["END_HEADERS", "END_STREAM"]).serialize()


def write_corpus() -> None:
    for name, seeds in (("http1", http1_seeds()), ("h2c", h2c_seeds())):
        directory = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        for seed, data in seeds.items():
            (directory / f"{seed}.bin").write_bytes(data)


if __name__ == "__main__":
    write_corpus()
