"""Subscriptions to the scaler's decisions, for StreamIsActive, the gateway and the local view.

A feed coalesces: a slow reader finds the newest decision per service waiting for it, never a backlog, so
memory stays bounded by the number of services however long a reader sleeps. A poke is never lost in the
coalescing: a pending change that was a poke stays marked as one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace

from kapa.core.services import ServiceKey
from scaler.decision import Decision


@dataclass(frozen=True)
class DecisionChange:
    """A service's new decision; `poked` when it answers the activator's demand signal."""

    key: ServiceKey
    decision: Decision
    poked: bool = False


class DecisionFeed:
    """The changes for some services (or all), read with `async for changes in feed:` (a list per wake-up)."""

    def __init__(self, keys: frozenset[ServiceKey] | None, on_close: Callable[[DecisionFeed], None]) -> None:
        self.keys = keys
        self._on_close = on_close
        self._pending: dict[ServiceKey, DecisionChange] = {}
        self._ready = asyncio.Event()
        self._closed = False

    def push(self, change: DecisionChange) -> None:
        previous = self._pending.get(change.key)
        if previous is not None and previous.poked and not change.poked:
            change = replace(change, poked=True)
        self._pending[change.key] = change
        self._ready.set()

    async def next(self) -> list[DecisionChange]:
        """Wait for at least one change and return all pending ones, oldest service first."""
        await self._ready.wait()
        self._ready.clear()
        changes = list(self._pending.values())
        self._pending.clear()
        return changes

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)

    def __aiter__(self) -> DecisionFeed:
        return self

    async def __anext__(self) -> list[DecisionChange]:
        return await self.next()

    def __enter__(self) -> DecisionFeed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
