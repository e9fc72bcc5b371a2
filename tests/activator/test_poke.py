"""Pokes: one per scaler per activation, retried while a scaler is unreachable."""

from __future__ import annotations

import asyncio

from aiohttp import web

from kapa.services import ServiceKey

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


async def test_unreachable_scaler_is_retried_until_it_answers() -> None:
    port = free_port()
    poker = Poker([f"http://127.0.0.1:{port}"])
    scaler = Scaler(port)
    try:
        poker.activate(HELLO)
        await asyncio.sleep(0.3)  # a few failed attempts with backoff
        await scaler.start()
        for _ in range(100):
            if scaler.pokes:
                break
            await asyncio.sleep(0.05)
        assert scaler.pokes == ["default/hello"]
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
