"""ConcurrencyLimiter on its own: slots up to the capacity, a FIFO queue of bounded depth behind them, refusal
beyond, and a slot handed straight from a finishing exchange to the oldest live waiter.

The end-to-end tests (test_limit.py) cannot see the order in which queued requests reach the app: with
equal requests any order serves the same counts. Here each exchange is named and the hand-over is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import pytest

from kapa.relay import Exchange
from queue_proxy.limiter import ADMITTED, QUEUED, REFUSED, ConcurrencyLimiter


@dataclass(eq=False)
class _Exchange:
    """The two attributes the limiter reads and writes, and a name to read failures by."""

    name: str
    slot_held: bool = False
    done: bool = False


def _limiter(capacity: int, queue_depth: int) -> tuple[ConcurrencyLimiter, list[str]]:
    """A limiter and the names of the exchanges it admitted from its queue, in order."""
    admitted: list[str] = []
    limiter = ConcurrencyLimiter(capacity, queue_depth, lambda exchange: admitted.append(_name(exchange)))
    return limiter, admitted


def _name(exchange: Exchange) -> str:
    return cast(_Exchange, exchange).name


def _arrive(limiter: ConcurrencyLimiter, *names: str) -> dict[str, Exchange]:
    exchanges = {name: cast(Exchange, _Exchange(name)) for name in names}
    for exchange in exchanges.values():
        limiter.acquire(exchange)
    return exchanges


@pytest.mark.parametrize(
    ("capacity", "queue_depth", "arrivals", "outcomes", "in_use", "waiting"),
    [
        pytest.param(1, 0, 3, [ADMITTED, REFUSED, REFUSED], 1, 0, id="no-queue"),
        pytest.param(1, 2, 4, [ADMITTED, QUEUED, QUEUED, REFUSED], 1, 2, id="one-slot-queue-of-2"),
        pytest.param(2, 3, 6, [ADMITTED, ADMITTED, QUEUED, QUEUED, QUEUED, REFUSED], 2, 3, id="two-slots-queue-of-3"),
        pytest.param(3, 1, 2, [ADMITTED, ADMITTED], 2, 0, id="below-capacity"),
    ],
)
def test_admits_up_to_capacity_queues_up_to_depth_refuses_beyond(
    capacity: int, queue_depth: int, arrivals: int, outcomes: list[int], in_use: int, waiting: int
) -> None:
    limiter, admitted = _limiter(capacity, queue_depth)
    exchanges = [cast(Exchange, _Exchange(str(i))) for i in range(arrivals)]
    assert [limiter.acquire(exchange) for exchange in exchanges] == outcomes
    assert (limiter.in_use, len(limiter.waiting)) == (in_use, waiting)
    # Only an admitted exchange holds a slot; queued and refused ones hold none until admit() says so.
    assert [exchange.slot_held for exchange in exchanges] == [outcome == ADMITTED for outcome in outcomes]
    assert admitted == []


def test_the_queue_is_served_first_in_first_out() -> None:
    """Knative's breaker, and the README, promise arrival order: LIFO would starve the oldest request."""
    limiter, admitted = _limiter(capacity=1, queue_depth=3)
    exchanges = _arrive(limiter, "first", "second", "third", "fourth")
    for name in ("first", "second", "third"):
        limiter.release(exchanges[name])
    assert admitted == ["second", "third", "fourth"]
    assert list(map(_name, limiter.waiting)) == []


def test_a_slot_passes_to_the_next_waiter_without_being_freed() -> None:
    limiter, admitted = _limiter(capacity=2, queue_depth=2)
    exchanges = _arrive(limiter, "a", "b", "c", "d")
    limiter.release(exchanges["a"])
    # The finishing exchange gives up its slot, the waiter takes it, the count of slots in use stays 2.
    assert (exchanges["a"].slot_held, exchanges["c"].slot_held, exchanges["d"].slot_held) == (False, True, False)
    assert (limiter.in_use, admitted, list(map(_name, limiter.waiting))) == (2, ["c"], ["d"])
    for name in ("b", "c", "d"):
        limiter.release(exchanges[name])
    assert (limiter.in_use, admitted) == (0, ["c", "d"])
    # Free slots are granted at once again.
    assert limiter.acquire(cast(Exchange, _Exchange("e"))) == ADMITTED and limiter.in_use == 1


def test_waiters_that_ended_while_queued_are_skipped() -> None:
    limiter, admitted = _limiter(capacity=1, queue_depth=3)
    exchanges = _arrive(limiter, "holder", "gone", "next", "also-gone")
    cast(_Exchange, exchanges["gone"]).done = True
    cast(_Exchange, exchanges["also-gone"]).done = True
    limiter.release(exchanges["holder"])
    assert admitted == ["next"] and exchanges["next"].slot_held and not exchanges["gone"].slot_held
    assert list(map(_name, limiter.waiting)) == ["also-gone"]
    limiter.release(exchanges["next"])
    # Only ended waiters were left: the slot is freed, not given to one of them.
    assert (admitted, limiter.in_use, len(limiter.waiting)) == (["next"], 0, 0)
    assert not exchanges["also-gone"].slot_held


def test_release_of_a_waiter_or_a_refused_exchange_frees_no_slot() -> None:
    limiter, admitted = _limiter(capacity=1, queue_depth=2)
    exchanges = _arrive(limiter, "holder", "waiter", "other", "refused")
    limiter.release(exchanges["waiter"])  # gave up while queued: leaves the queue, holds no slot
    limiter.release(exchanges["refused"])  # never queued: nothing to do
    assert (limiter.in_use, list(map(_name, limiter.waiting)), admitted) == (1, ["other"], [])
    limiter.release(exchanges["holder"])
    assert admitted == ["other"] and limiter.in_use == 1
