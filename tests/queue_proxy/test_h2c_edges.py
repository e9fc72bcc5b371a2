"""The edges of an h2c connection through the real queue-proxy, with a client that breaks the rules: a stream
counts only while the app has it, CONTAINER_CONCURRENCY is enforced (not just advertised), rapid resets get
the connection closed, and an idle connection is closed with GOAWAY."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from kapa.core import contract
from kapa.relay.h2c import MAX_EARLY_RESETS
from tests.activator.test_activator import wait_for
from tests.kapa.relay.h2_peers import ENHANCE_YOUR_CALM, NO_ERROR, REFUSED_STREAM, RawH2Client, h2_app
from tests.queue_proxy.conftest import Proxy, queue_proxy


async def _metric(proxy: Proxy, name: str, **labels: str) -> float:
    return await asyncio.to_thread(proxy.metric, name, **labels)


def _response_end(stream_id: int):  # type: ignore[no-untyped-def]
    return lambda frame: isinstance(frame, HeadersFrame) and frame.stream_id == stream_id and "END_STREAM" in frame.flags


async def test_a_stream_the_app_has_answered_stops_counting_though_its_client_never_ends_it(tmp_path: Path) -> None:
    async with h2_app(answer_at_once=True) as (app, app_port):
        with queue_proxy(tmp_path, app_port, **{contract.ENV_REVISION_TIMEOUT_SECONDS: "0.5"}) as proxy:
            client = await RawH2Client.connect(proxy.port)
            await client.send(client.headers(1, end_stream=False))  # and the client never ends its side
            await client.until(_response_end(1))

            async def nothing_in_flight() -> bool:
                return await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0

            await wait_for(nothing_in_flight)
            assert await _metric(proxy, contract.REQUESTS, code_class="2xx") == 1
            assert client.statuses == {1: 200}
            assert not client.closed  # the connection (and the client's side of the stream) stay open
            await client.close()


async def test_streams_beyond_container_concurrency_are_refused_and_never_reach_the_app(tmp_path: Path) -> None:
    async with h2_app(answer_at_once=False) as (app, app_port):
        with queue_proxy(tmp_path, app_port, **{contract.ENV_CONTAINER_CONCURRENCY: "2"}) as proxy:
            client = await RawH2Client.connect(proxy.port)

            def limit_told(frame: Frame) -> bool:
                return isinstance(frame, SettingsFrame) and frame.settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS) == 2

            await client.until(limit_told)
            # Told 2, the client opens 5 at once; the last 3 with a body the app must not see either.
            within = client.headers(1, path="/1") + client.headers(3, path="/3")  # HPACK: encoded in sending order
            over = b"".join(client.headers(i, path=f"/{i}", end_stream=False) + client.data(i, b"x" * 1000) for i in (5, 7, 9))
            await client.send(within + over)
            await client.until(lambda frame: isinstance(frame, RstStreamFrame) and frame.stream_id == 9)
            assert client.resets(REFUSED_STREAM) == [5, 7, 9]
            # The app never sees those bytes, so the relay gives their flow-control window back itself.
            await client.until(lambda frame: client.connection_window_credit() >= 3000)
            assert client.connection_window_credit() == 3000

            async def two_at_the_app() -> bool:
                return len(app.requests) == 2 and await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 2

            await wait_for(two_at_the_app)
            assert app.paths() == ["/1", "/3"]

            app.answer_all()
            await client.until(_response_end(3))
            # Within the limit again, a stream passes, its headers decoded right by the app although the
            # refused blocks it never saw had changed the client's HPACK table. Should the client's encoder
            # miss the relay's first request to start its table afresh, that stream is refused too, and the
            # client retries (as gRPC does on REFUSED_STREAM).
            app.answer_at_once = True
            for stream_id in (11, 13, 15):
                await client.send(client.headers(stream_id, path="/again"))
                ended = await client.until(
                    lambda frame: frame.stream_id == stream_id and isinstance(frame, (RstStreamFrame, HeadersFrame))
                )
                if isinstance(ended, HeadersFrame):
                    break
            assert app.paths() == ["/1", "/3", "/again"]
            assert client.statuses == {1: 200, 3: 200, stream_id: 200}
            assert app.resets == []
            assert await _metric(proxy, contract.REQUESTS, code_class="2xx") == 3
            assert await _metric(proxy, contract.REQUESTS) == 3  # refused streams are no requests
            assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0
            await client.close()


async def test_a_client_that_resets_streams_as_fast_as_it_opens_them_is_sent_away(tmp_path: Path) -> None:
    async with h2_app(answer_at_once=False) as (app, app_port):
        with queue_proxy(tmp_path, app_port) as proxy:
            client = await RawH2Client.connect(proxy.port)
            await client.until(lambda frame: isinstance(frame, SettingsFrame))
            pairs = MAX_EARLY_RESETS + 50
            await client.send(b"".join(
                client.headers(2 * i + 1, end_stream=False) + client.reset(2 * i + 1) for i in range(pairs)
            ))
            goaway = await client.until(lambda frame: isinstance(frame, GoAwayFrame))
            assert goaway.error_code == ENHANCE_YOUR_CALM  # type: ignore[attr-defined]
            await client.until_closed()
            assert len(app.requests) <= MAX_EARLY_RESETS < pairs
            assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0


async def test_a_stream_reset_in_the_read_that_opened_it_is_no_request(tmp_path: Path) -> None:
    async with h2_app(answer_at_once=True) as (app, app_port):
        with queue_proxy(tmp_path, app_port) as proxy:
            client = await RawH2Client.connect(proxy.port)
            await client.send(client.headers(1, end_stream=False) + client.reset(1))  # one write: one read
            await client.send(client.headers(3))
            await client.until(_response_end(3))
            assert await _metric(proxy, contract.REQUESTS) == 1  # stream 3's: stream 1 took no time at the app
            assert await _metric(proxy, contract.REQUESTS_IN_FLIGHT) == 0
            await client.close()


async def test_an_idle_h2c_connection_is_sent_away_and_frees_its_app_connection(tmp_path: Path) -> None:
    async with h2_app(answer_at_once=False) as (app, app_port):
        with queue_proxy(tmp_path, app_port, **{contract.ENV_IDLE_TIMEOUT_SECONDS: "1"}) as proxy:

            async def app_connections(count: int) -> bool:
                return app.open_connections == count

            async def busy_at_the_app() -> bool:
                return len(app.requests) == 1

            idle = await RawH2Client.connect(proxy.port)  # the preface, and nothing more
            await wait_for(lambda: app_connections(1))  # the queue-proxy connected to the app for it
            busy = await RawH2Client.connect(proxy.port)
            await busy.send(busy.headers(1))  # at the app, not answered yet
            await wait_for(busy_at_the_app)
            goaway = await idle.until(lambda frame: isinstance(frame, GoAwayFrame))
            assert (goaway.error_code, goaway.last_stream_id) == (NO_ERROR, 0)  # type: ignore[attr-defined]
            await idle.until_closed()
            await wait_for(lambda: app_connections(1))  # the busy connection's only

            # The other connection had a stream at the app all along: still open, and idle once answered.
            app.answer_all()
            await busy.until(_response_end(1))
            goaway = await busy.until(lambda frame: isinstance(frame, GoAwayFrame))
            assert (goaway.error_code, goaway.last_stream_id) == (NO_ERROR, 1)  # type: ignore[attr-defined]
            await busy.until_closed()
            await wait_for(lambda: app_connections(0))
            assert await _metric(proxy, contract.REQUESTS, code_class="2xx") == 1
