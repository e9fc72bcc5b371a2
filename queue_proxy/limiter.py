"""The hard concurrency limit (Knative's breaker): at most `capacity` requests at the app, a FIFO queue of
bounded depth behind them, and an immediate refusal beyond that.

A slot passes straight from a finishing request to the oldest waiting one, so the app never sees more
than `capacity` at once and waiting requests are served in arrival order. Whoever holds or waits for a
slot is an `Exchange`; `release` is called for every exchange that ends, however it ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import suppress

from kapa.relay import Exchange

ADMITTED, QUEUED, REFUSED = 0, 1, 2


class ConcurrencyLimiter:
    def __init__(self, capacity: int, queue_depth: int, admit: Callable[[Exchange], None]) -> None:
        """`admit(exchange)` is called when a queued exchange gets its slot."""
        self.capacity = capacity
        self.queue_depth = queue_depth
        self.in_use = 0
        self.waiting: deque[Exchange] = deque()
        self._admit = admit

    def acquire(self, exchange: Exchange) -> int:
        """ADMITTED (the exchange holds a slot now), QUEUED (admit() will be called) or REFUSED."""
        if self.in_use < self.capacity:
            self.in_use += 1
            exchange.slot_held = True
            return ADMITTED
        if len(self.waiting) < self.queue_depth:
            self.waiting.append(exchange)
            return QUEUED
        return REFUSED

    def release(self, exchange: Exchange) -> None:
        """The exchange ended: free its slot (for the next in line) or its place in the queue."""
        if not exchange.slot_held:
            with suppress(ValueError):  # not there: it was refused, never queued
                self.waiting.remove(exchange)  # gave up while waiting; rare, so O(queue) is fine
            return
        exchange.slot_held = False
        waiting = self.waiting
        while waiting:
            following = waiting.popleft()
            if following.done:
                continue
            following.slot_held = True
            self._admit(following)
            return
        self.in_use -= 1
