"""The local backend with real processes: sample-app replicas behind real queue-proxies.

The endpoint sink here records what the backend announces (the activator's side of that exchange is tested
with the activator in the scenarios); everything else is real: processes, ports, readiness, SIGTERM drains.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from kapa.local.app_spec import app_spec
from kapa.local.backend import LocalBackend, ReplicaState
from kapa.local.processes import Supervisor
from kapa.core.services import Endpoint, ServiceKey, parse_services

HELLO = ServiceKey("default", "hello")


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[tuple[float, tuple[Endpoint, ...]]] = []
        #: Cleared, a call waits for it: a peer that does not answer yet (restarting, its calls retrying).
        self.answering = asyncio.Event()
        self.answering.set()

    async def set_endpoints(self, key: ServiceKey, endpoints: Sequence[Endpoint]) -> None:
        assert key == HELLO
        await self.answering.wait()
        self.calls.append((time.monotonic(), tuple(endpoints)))

    @property
    def current(self) -> tuple[Endpoint, ...]:
        return self.calls[-1][1] if self.calls else ()


def _backend(tmp_path: Path, sinks: Sequence[RecordingSink], command: list[str] | None = None,
             ) -> tuple[LocalBackend, Supervisor]:
    command = command or ["{python}", "-m", "kapa", "sample-app", "--port", "{port}"]
    (entry,) = parse_services({"services": [{"name": "hello", "local": {"command": command,
                                                                        "readinessPath": "/ready"}}]})
    supervisor = Supervisor(tmp_path)
    return LocalBackend({HELLO: (entry, app_spec(entry))}, supervisor, sinks, drain_s=0.5), supervisor


async def _until(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _get(endpoint: Endpoint, query: str = "") -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{endpoint}/{query}") as response:
            await response.read()
            return response.status


async def test_scale_up_serve_and_drain_down(tmp_path: Path) -> None:
    sink = RecordingSink()
    backend, supervisor = _backend(tmp_path, [sink])
    try:
        assert backend.counts(HELLO).ready == 0
        backend.set_desired(HELLO, 2)
        await _until(lambda: backend.counts(HELLO).ready == 2, 20)
        await _until(lambda: len(sink.current) == 2, 2)
        assert [await _get(endpoint) for endpoint in sink.current] == [200, 200]

        # A request in flight on the replica being removed still completes: out of the endpoints first, then
        # SIGTERM, and the queue-proxy drains before it exits.
        victim = backend.replicas(HELLO)[-1]
        slow = asyncio.create_task(_get(victim.endpoint, "?sleep=1500"))
        await asyncio.sleep(0.3)
        backend.set_desired(HELLO, 1)
        assert backend.counts(HELLO).ready == 1 and victim.state is ReplicaState.DRAINING
        await _until(lambda: victim.endpoint not in sink.current, 2)
        assert await slow == 200
        await _until(lambda: len(backend.replicas(HELLO)) == 1, 15)
        assert backend.counts(HELLO).failures == 0
    finally:
        await backend.close()
        await supervisor.stop_all(1)
    assert not supervisor.children


async def test_a_replica_whose_app_dies_is_replaced(tmp_path: Path) -> None:
    sink = RecordingSink()
    backend, supervisor = _backend(tmp_path, [sink])
    try:
        backend.set_desired(HELLO, 1)
        await _until(lambda: backend.counts(HELLO).ready == 1, 20)
        (first,) = backend.replicas(HELLO)
        app = next(child for child in supervisor.children if child.name == f"{first.name}-app")
        os.kill(app.pid, signal.SIGKILL)
        await _until(lambda: first.endpoint not in sink.current, 5)
        await _until(lambda: backend.counts(HELLO).ready == 1 and backend.replicas(HELLO)[0] is not first, 20)
        assert backend.counts(HELLO).failures == 1
        assert await _get(backend.replicas(HELLO)[0].endpoint) == 200
    finally:
        await backend.close()
        await supervisor.stop_all(1)


async def test_a_command_that_fails_is_retried_with_growing_delays(tmp_path: Path) -> None:
    sink = RecordingSink()
    backend, supervisor = _backend(tmp_path, [sink], ["false", "{port}"])
    try:
        backend.set_desired(HELLO, 1)
        await asyncio.sleep(3)
        # 0.5 + 1 + 2 s of back-off: three or four attempts in 3 s, not hundreds.
        assert 2 <= backend.counts(HELLO).failures <= 4
        assert backend.counts(HELLO).ready == 0 and sink.current == ()
    finally:
        await backend.close()
        await supervisor.stop_all(1)
    assert not supervisor.children



async def test_a_sink_that_does_not_answer_holds_up_no_other(tmp_path: Path) -> None:
    """An activator restarting (kapa up's registrations retry until it is back) must not keep the gateway and
    the scaler from hearing of a new replica."""
    silent, other = RecordingSink(), RecordingSink()
    silent.answering.clear()
    backend, supervisor = _backend(tmp_path, [silent, other])
    try:
        backend.set_desired(HELLO, 1)
        await _until(lambda: len(other.current) == 1, 20)
        assert silent.calls == []
        silent.answering.set()
        await _until(lambda: silent.current == other.current, 5)
    finally:
        await backend.close()
        await supervisor.stop_all(1)
