"""Every input the fuzzers found breaking a promise, minimised by hand to the bytes that matter, with the class
of bug it stands for. test_regressions.py replays each through the harness.

`open` findings are bugs not yet fixed, in code owned elsewhere (kapa/relay, activator, queue_proxy/handler.py):
their replay is xfail(strict=True), so the fix landing turns it into a failure that says to drop the mark
(set `open=False`). A bounded fuzzing run that trips over an open class is told apart by `signature`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpack import Encoder

from kapa.relay.h2c import PREFACE
from tests.fuzz.frames import data, raw, request, reset, settings
from tests.fuzz.harness import Behaviour, encode


@dataclass(frozen=True)
class Finding:
    name: str
    #: The fuzzer (a key of harness.TARGETS) whose input this is.
    target: str
    input: bytes
    #: The class of bug, as the xfail reason and the report name it.
    bug_class: str
    #: Matches what the harness reports for this class (the fuzzer's output of a crash).
    signature: str
    open: bool = True

    def matches(self, report: str) -> bool:
        return re.search(self.signature, report) is not None


#: DATA on stream 0: a connection error (RFC 9113 6.1) the app answers with GOAWAY and a close, as it would
#: answer any other; a way to have the app close that any client has.
_APP_CLOSES = raw(0x0, 0, 0, b"x")
_APP_CLOSED_SIGNATURE = r"write\(\) after write_eof|\(the app had closed its connection\)"
_UNCOUNTED_STREAM_SIGNATURE = r"h2c app serves streams not counted|h2c app received streams never announced"

FINDINGS = (
    Finding(
        "h2c_app_close_keeps_streams_counted", "h2c",
        encode(Behaviour(), settings() + request(Encoder(), 1, end_stream=False) + _APP_CLOSES),
        "h2c: the app's close of its connection reaches the client as a half-close (as for a byte pipe), and the "
        "streams that were at the app stay counted in flight, phantom load, for as long as the client keeps the "
        "connection",
        _APP_CLOSED_SIGNATURE,
        open=False
    ),
    Finding(
        "h2c_idle_expiry_after_app_close_raises", "h2c",
        encode(Behaviour(time_passes=True), settings() + _APP_CLOSES),
        "h2c: after the app closed, the relay writes its own frames to the client it has half-closed (GOAWAY of "
        "the idle expiry): RuntimeError (write after write_eof) out of RelayServer.sweep, which ends the relay's "
        "sweep task: no more header-read or idle timeouts, no more checks for clients gone",
        _APP_CLOSED_SIGNATURE,
        open=False
    ),
    Finding(
        "h2c_cancel_after_app_close_raises", "h2c",
        encode(Behaviour(cancel_streams=True), settings() + request(Encoder(), 1, end_stream=False) + _APP_CLOSES),
        "h2c: after the app closed, H2Stream.cancel writes RST_STREAM to the client it has half-closed: "
        "RuntimeError (write after write_eof) into the handler; the queue-proxy's timeout loop (expire_forever) "
        "dies of it",
        _APP_CLOSED_SIGNATURE,
        open=False
    ),
    Finding(
        "h2c_reset_booked_before_its_payload", "h2c",
        encode(Behaviour(), settings() + request(Encoder(), 1, end_stream=False) + reset(1)[:12]),
        "h2c: a RST_STREAM is booked at its frame header, before its payload (so before the app has it): a "
        "client that withholds the last bytes keeps a stream at the app that is never counted",
        _UNCOUNTED_STREAM_SIGNATURE,
        open=False
    ),
    Finding(
        "h2c_reset_with_a_wrong_length", "h2c",
        encode(
            Behaviour(),
            settings() + request(Encoder(), 1, end_stream=False) + raw(0x3, 0, 1, b"\0\0\0\x08", length=132),
        ),
        "h2c: a RST_STREAM whose length is not 4 (a connection error, RFC 9113 6.4) is booked as a reset, while "
        "the app waits for the rest of the frame and serves the stream, uncounted",
        _UNCOUNTED_STREAM_SIGNATURE,
        open=False
    ),
    Finding(
        "h2c_header_block_without_its_end", "h2c",
        encode(Behaviour(), settings() + raw(0x1, 0x1, 1, Encoder().encode([(":method", "GET")]))),
        "h2c: a stream is counted from the first bytes of its HEADERS frame, before its header block is whole "
        "(CONTINUATION to come, as here, or the frame's payload still arriving): while the client withholds the "
        "rest, the app has not started the request, and the count is phantom load",
        r"streams counted in flight that the h2c app is not serving: \[[\d, ]+\]\n",
        open=False
    ),
    Finding(
        "h2c_cancel_while_the_client_is_mid_frame", "h2c",
        encode(
            Behaviour(cancel_streams=True),
            settings() + request(Encoder(), 1, end_stream=False) + data(1, b"x" * 100, end_stream=False)[:19],
        ),
        "h2c: H2Stream.cancel books the stream closed at once, but its RST_STREAM reaches the app only at the "
        "next boundary of the client's frames: a client stalled inside a frame keeps the stream at the app, "
        "uncounted",
        _UNCOUNTED_STREAM_SIGNATURE,
        open=False
    ),
    Finding(
        "http1_pri_request_without_version", "http1",
        encode(Behaviour(), b"PRI *\r\n\r\n"),
        "HTTP/1: a PRI request line without a version (HTTP/0.9 to llhttp: `PRI *`, `PRI /x`) is forwarded "
        "rebuilt as `PRI <target> HTTP/0.9`; PRI is the HTTP/2 preface's method (RFC 9113 3.4), and an llhttp app "
        "(Node.js; httptools here) waits for the rest of a preface, or refuses it: the request is counted in "
        "flight and never answered, also after the client has closed, until the handler's timeout",
        r"PRI \S+ HTTP/0\.9",
        open=False
    ),
    Finding(
        "http1_connect_without_target", "http1",
        encode(Behaviour(), b"CONNECT \r\n\r\n"),
        "HTTP/1: a CONNECT request line with an empty target (and no version) raises IndexError in the relay's "
        "request-target check (`url[0]`): the client gets 500 where 400 is due, and the relay logs an error "
        "per request, a log flood anyone can send",
        r"relay bug while handling a request .*IndexError",
        open=False
    ),
    Finding(
        "http1_upgrade_taken_as_h2c_the_app_did_not_choose", "http1",
        encode(Behaviour(), (
            b"GET / HTTP/1.1\r\nHost: app.fuzz\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nUpgrade: websocket\r\n\r\n"
        ) + PREFACE + request(Encoder(), 3)),
        "HTTP/1: on a 101 the relay goes h2c when the request's head has `Upgrade: h2c` (Exchange.upgrade_accepted), "
        "not when the app's 101 names h2c (RFC 9110 7.8: the 101's Upgrade is the protocol switched to): with a "
        "second Upgrade header, which the app chose (websocket), the app has a byte pipe and the relay an h2c "
        "relay, which counts the client's HTTP/2 streams in flight while no app serves them, phantom load until "
        "the connection ends",
        r"streams counted in flight that the h2c app is not serving(?s:.*)the client received: b.HTTP/1\.1 101 "
        r"[^\n]*Upgrade: websocket",
        open=False
    ),
)


def open_finding(report: str) -> Finding | None:
    """The open finding whose class `report` (what the harness raised) shows, if any."""
    return next((finding for finding in FINDINGS if finding.open and finding.matches(report)), None)
