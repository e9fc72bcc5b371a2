"""Pokes: one per scaler per activation, retried while a scaler is unreachable."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from kapa.core.services import ServiceKey

from activator.poke import Poker
from tests.support import free_port, serve_app

HELLO = ServiceKey("default", "hello")


class Scaler:
    """Stands in for the scaler's HTTP port: records pokes."""

    def __init__(self, port: int | None = None, status: int = 200) -> None:
        self.port = port or free_port()
        self.status = status
        self.pokes: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Scaler:
        async def poke(request: web.Request) -> web.Response:
            self.pokes.append(f"{request.match_info['namespace']}/{request.match_info['name']}")
            return web.Response(status=self.status)

        app = web.Application()
        app.router.add_post("/v1/poke/{namespace}/{name}", poke)
        self._runner = await serve_app(app, self.port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_one_poke_per_scaler_per_activation() -> None:
    first, second = await Scaler().start(), await Scaler().start()
    poker = Poker([first.url, second.url + "/"])
    try:
        for _ in range(50):  # fifty requests of one activation
            poker.activate(HELLO)
        await asyncio.sleep(0.2)
        assert first.pokes == ["default/hello"] and second.pokes == ["default/hello"]
        assert poker.sent[HELLO] == 2
        poker.end(HELLO)
        poker.activate(HELLO)  # the next activation pokes again
        await asyncio.sleep(0.2)
        assert len(first.pokes) == 2
    finally:
        await poker.close()
        await first.stop()
        await second.stop()


@pytest.fixture
def retry_delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the poker waits between attempts, in order; its waits then take no time. Other sleeps (the
    test's, aiohttp's) are left alone: only the poke tasks (named "poke ...") are told apart."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, result: object = None) -> object:
        task = asyncio.current_task()
        if task is not None and task.get_name().startswith("poke "):
            delays.append(delay)
            delay = 0
        return await real_sleep(delay, result)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return delays


async def test_unreachable_scaler_is_retried_with_exponential_backoff_until_it_answers(
    retry_delays: list[float],
) -> None:
    port = free_port()
    poker = Poker([f"http://127.0.0.1:{port}"])
    scaler = Scaler(port)
    try:
        poker.activate(HELLO)
        for _ in range(500):  # nothing listens: each attempt fails at once
            if len(retry_delays) >= 9:
                break
            await asyncio.sleep(0.01)
        # Doubling from 50 ms, capped at 2 s.
        assert retry_delays[:9] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
        await scaler.start()
        for _ in range(100):
            if scaler.pokes:
                break
            await asyncio.sleep(0.05)
        assert scaler.pokes == ["default/hello"] and poker.sent[HELLO] == 1
        assert set(retry_delays[6:]) == {2.0}  # the attempts until the scaler came up stayed at the cap
    finally:
        await poker.close()
        await scaler.stop()


async def test_a_refusing_scaler_is_not_retried() -> None:
    scaler = await Scaler(status=404).start()
    poker = Poker([scaler.url])
    try:
        poker.activate(HELLO)
        await asyncio.sleep(0.5)
        assert scaler.pokes == ["default/hello"] and poker.sent.get(HELLO, 0) == 0
    finally:
        await poker.close()
        await scaler.stop()
