"""Graceful drain: SIGTERM mid-load loses no request; the process exits 0 after a quiet period."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import grpc

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy, get_json, queue_proxy
from tests.queue_proxy.grpc_app import Greeter, grpc_server, identity


def _ready_status(admin_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{contract.READY_PATH}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _reset_app(app_port: int) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{app_port}/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _counted(proxy: Proxy) -> dict[str, float]:
    """What the proxy's metrics say about the requests it relayed (read once the load is over)."""
    return {
        "requests": proxy.metric(contract.REQUESTS),
        "2xx": proxy.metric(contract.REQUESTS, code_class="2xx"),
        "in_flight": proxy.metric(contract.REQUESTS_IN_FLIGHT),
        "rejected": proxy.metric(contract.REJECTED_REQUESTS),
    }


async def test_sigterm_mid_load_fails_no_request(app_port: int, tmp_path: Path) -> None:
    """Every request of the load is answered 200, reached the app exactly once (the app counts what it
    served), and is counted once in the proxy's metrics, including those that arrived during the drain."""
    await asyncio.to_thread(_reset_app, app_port)
    with queue_proxy(tmp_path, app_port, KAPA_DRAIN_SECONDS="1") as proxy:
        outcomes: list[int | str] = []
        load_until = time.monotonic() + 2.5

        async def worker(session: aiohttp.ClientSession) -> None:
            while time.monotonic() < load_until:
                try:
                    async with session.get(f"{proxy.url}/sleep?ms=20") as response:
                        await response.read()
                        outcomes.append(response.status)
                except aiohttp.ClientError as error:
                    outcomes.append(repr(error))

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            load = asyncio.gather(*(worker(session) for _ in range(20)))
            await asyncio.sleep(0.7)
            proxy.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            assert await asyncio.to_thread(_ready_status, proxy.admin_port) == 503  # unready at once
            await load
            load_ended = time.monotonic()
            # New connections were still accepted during the drain (the load kept arriving).
            assert proxy.process.poll() is None
            # The quiet period has begun: nothing arrives any more, and the metrics are still served.
            counted = await asyncio.to_thread(_counted, proxy)
        exit_code = await asyncio.to_thread(proxy.process.wait, 10)
        exited_after = time.monotonic() - load_ended
        assert exit_code == 0
        assert 0.8 <= exited_after < 2.5  # the quiet period of 1 s after the last request
        failures = [o for o in outcomes if o != 200]
        assert len(outcomes) > 500 and failures == []
    served: dict[str, int] = await asyncio.to_thread(get_json, f"http://127.0.0.1:{app_port}/stats")  # type: ignore[assignment]
    assert (served["current"], served["total"]) == (0, len(outcomes))
    assert counted == {"requests": len(outcomes), "2xx": len(outcomes), "in_flight": 0, "rejected": 0}


async def test_wait_for_drain_holds_a_prestop_hook_until_quiet(app_port: int, tmp_path: Path) -> None:
    with queue_proxy(tmp_path, app_port, KAPA_DRAIN_SECONDS="1") as proxy:
        admin = f"http://127.0.0.1:{proxy.admin_port}"

        def wait_for_drain() -> tuple[int, float]:
            with urllib.request.urlopen(admin + contract.WAIT_FOR_DRAIN_PATH, timeout=10) as response:
                return response.status, time.monotonic()

        hook = asyncio.create_task(asyncio.to_thread(wait_for_drain))
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(_ready_status, proxy.admin_port) == 503
        async with aiohttp.ClientSession() as session:
            for _ in range(5):  # still served while draining, and each one restarts the quiet period
                async with session.get(f"{proxy.url}/sleep?ms=0") as response:
                    assert response.status == 200
                last_request = time.monotonic()
                await asyncio.sleep(0.3)
            assert not hook.done()
        status, answered_at = await hook
        assert status == 200 and 0.9 <= answered_at - last_request < 1.6  # 1 s after the last arrival
        # The quiet period has passed: SIGTERM now ends the process at once.
        proxy.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await asyncio.to_thread(proxy.process.wait, 5) == 0
        assert time.monotonic() - signalled < 0.6


async def test_idle_connections_do_not_hold_the_exit_for_the_revision_timeout(
    app_port: int, tmp_path: Path
) -> None:
    """An idle keep-alive client connection (Envoy's, Prometheus') and the pooled connection to the app
    are not requests in flight: the process exits right after the quiet period, not after the timeout."""
    with queue_proxy(tmp_path, app_port, KAPA_DRAIN_SECONDS="1", REVISION_TIMEOUT_SECONDS="300") as proxy:
        async with aiohttp.ClientSession() as session:
            # Completed requests: the client keeps its connection open, the proxy pools its one to the app.
            for _ in range(3):
                async with session.get(f"{proxy.url}/sleep?ms=0") as response:
                    assert response.status == 200
            reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))
            writer.write(b"GET /sleep?ms=0 HTTP/1.1\r\nHost: app\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            # Prometheus keeps its scrape connection to the metrics port open between scrapes.
            async with session.get(f"http://127.0.0.1:{proxy.metrics_port}{contract.METRICS_PATH}") as response:
                assert response.status == 200
            proxy.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert await asyncio.to_thread(proxy.process.wait, 10) == 0
            assert time.monotonic() - signalled < 3  # the quiet period of 1 s, then at once
            # The rest of the response, then EOF: the idle connection was closed, not left open.
            assert (await reader.read()).endswith(b"slept\n")
            writer.close()


async def test_an_idle_h2c_connection_does_not_hold_the_exit(tmp_path: Path) -> None:
    """A gRPC channel with no open stream is idle too: closed at the end of the quiet period."""
    async with grpc_server(Greeter().handler()) as app_port:
        with queue_proxy(tmp_path, app_port, KAPA_DRAIN_SECONDS="1", REVISION_TIMEOUT_SECONDS="300") as proxy:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
                unary = channel.unary_unary("/kapa.test.Greeter/Unary", identity, identity)
                assert await unary(b"x", timeout=5) == b"hello x"
                proxy.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                assert await asyncio.to_thread(proxy.process.wait, 10) == 0
                assert time.monotonic() - signalled < 3
