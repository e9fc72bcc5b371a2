"""Decision feeds coalesce per service and never lose a poke."""

from __future__ import annotations

import asyncio

import pytest

from kapa.core.contract import MODE_SERVE
from kapa.core.services import ServiceKey
from scaler.decision import Decision
from scaler.feed import DecisionChange, DecisionFeed

A, B = ServiceKey("default", "a"), ServiceKey("default", "b")


def decision(pods: int) -> Decision:
    return Decision(pods, 0, False, False, MODE_SERVE, 1.0, 1.0, 1.0, pods, 0.0, ())


@pytest.mark.parametrize(
    ("pushed", "expected"),
    [
        # newest decision per service wins
        ([(A, 1, False), (A, 2, False)], [(A, 2, False)]),
        # a poke stays a poke when a later change for the same service arrives before the reader
        ([(A, 1, True), (A, 3, False)], [(A, 3, True)]),
        ([(A, 1, False), (B, 2, True), (A, 4, False)], [(A, 4, False), (B, 2, True)]),
    ],
)
async def test_coalescing(pushed: list[tuple[ServiceKey, int, bool]], expected: list[tuple[ServiceKey, int, bool]]) -> None:
    closed: list[DecisionFeed] = []
    with DecisionFeed(None, closed.append) as feed:
        for key, pods, poked in pushed:
            feed.push(DecisionChange(key, decision(pods), poked))
        changes = await asyncio.wait_for(feed.next(), 1)
        assert [(c.key, c.decision.desired_pods, c.poked) for c in changes] == expected
        with pytest.raises(asyncio.TimeoutError):  # nothing pending any more
            await asyncio.wait_for(feed.next(), 0.05)
    assert closed == [feed]
