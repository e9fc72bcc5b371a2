"""Admission: holding, limits, timeouts, dispatch to pods as they turn ready, slots always returned."""

from __future__ import annotations

import asyncio

import pytest

from kapa.core.services import Endpoint, ServiceKey

from activator.config import ServiceSettings
from activator.peers import ALONE, Share
from activator.throttler import HoldTimeout, QueueFull, Throttler

A = Endpoint("127.0.0.1", 1001)
B = Endpoint("127.0.0.1", 1002)


def throttler(concurrency: int = 0, timeout_s: float = 5.0, queue_limit: int = 100) -> Throttler:
    settings = ServiceSettings(ServiceKey("default", "hello"), (), None, concurrency, timeout_s, queue_limit)
    return Throttler(settings)


async def test_requests_are_held_until_a_pod_turns_ready() -> None:
    t = throttler()
    t.set_endpoints([A])
    waiting = [asyncio.create_task(t.acquire()) for _ in range(5)]
    await asyncio.sleep(0)
    assert t.held == 5 and t.in_flight == 0
    t.mark_ready(A)  # probed ready: every waiter gets the pod at once (no limit)
    granted = await asyncio.gather(*waiting)
    assert {pod.endpoint for pod in granted} == {A}
    assert t.held == 0 and t.in_flight == 5
    for pod in granted:
        t.release(pod)
    assert t.in_flight == 0 and granted[0].in_flight == 0


async def test_container_concurrency_one_never_over_grants_and_spreads_to_a_second_pod() -> None:
    t = throttler(concurrency=1)
    t.set_endpoints([A, B])
    t.mark_ready(A)
    first = t.try_acquire()
    assert first is not None and first.endpoint == A
    assert t.try_acquire() is None  # A is full
    waiting = [asyncio.create_task(t.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert t.held == 3
    t.mark_ready(B)  # the second pod takes the first waiter at once
    await asyncio.sleep(0)
    assert waiting[0].done() and waiting[0].result().endpoint == B
    assert t.held == 2
    t.release(first)  # A frees up: the next waiter gets A
    await asyncio.sleep(0)
    assert waiting[1].done() and waiting[1].result().endpoint == A
    assert not waiting[2].done()
    t.release(waiting[0].result())
    assert (await waiting[2]).endpoint == B
    assert all(pod.in_flight <= 1 for pod in (waiting[1].result(), waiting[2].result()))


async def test_queue_limit_rejects_at_once() -> None:
    t = throttler(queue_limit=2)
    waiting = [asyncio.create_task(t.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await t.acquire()
    assert t.held == 2
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert t.held == 0


async def test_held_past_timeout_raises_and_frees_its_place() -> None:
    t = throttler(timeout_s=0.05)
    started = asyncio.get_running_loop().time()
    with pytest.raises(HoldTimeout):
        await t.acquire()
    assert asyncio.get_running_loop().time() - started >= 0.045
    assert t.held == 0
    t.set_endpoints([A])
    t.mark_ready(A)
    assert t.in_flight == 0  # the expired waiter got nothing


async def test_waiter_cancelled_as_it_is_granted_returns_the_slot() -> None:
    t = throttler(concurrency=1)
    t.set_endpoints([A])
    task = asyncio.create_task(t.acquire())
    await asyncio.sleep(0)
    t.mark_ready(A)  # grants the slot to the waiter...
    task.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert t.in_flight == 0 and t.held == 0
    assert t.try_acquire() is not None  # the slot is free again


async def test_pod_gone_stops_new_requests_and_late_release_is_harmless() -> None:
    t = throttler(concurrency=2)
    t.set_endpoints([A])
    t.mark_ready(A)
    pod = t.try_acquire()
    assert pod is not None
    t.set_endpoints([])
    assert t.ready_count == 0 and t.try_acquire() is None
    t.release(pod)
    assert t.in_flight == 0


async def test_abandoned_waiters_do_not_grow_the_queue() -> None:
    t = throttler(queue_limit=10_000)
    for _ in range(20):
        tasks = [asyncio.create_task(t.acquire()) for _ in range(100)]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)  # compaction raised nothing
    assert t.held == 0 and len(t._waiters) <= 200


async def test_occupancy_integral_counts_held_and_in_flight() -> None:
    now = [0.0]
    settings = ServiceSettings(ServiceKey("default", "hello"), ())
    t = Throttler(settings, clock=lambda: now[0])
    t.set_endpoints([A])
    task = asyncio.create_task(t.acquire())
    await asyncio.sleep(0)
    now[0] = 2.0  # one request held for 2 s
    t.mark_ready(A)
    pod = await task
    second = t.try_acquire()
    now[0] = 3.0  # two in flight for 1 s
    assert second is not None
    t.release(pod)
    t.release(second)
    now[0] = 10.0
    assert t.occupancy_seconds() == pytest.approx(4.0)


async def test_a_request_sent_back_to_wait_keeps_its_original_deadline() -> None:
    t = throttler(timeout_s=5.0)
    started = asyncio.get_running_loop().time()
    with pytest.raises(HoldTimeout):
        await t.acquire(timeout_s=0.05)  # what is left of the service's timeout
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_free_slot_is_granted_without_waiting() -> None:
    t = throttler(concurrency=1)
    t.set_endpoints([A])
    t.mark_ready(A)
    task = asyncio.create_task(t.acquire())
    await asyncio.sleep(0)  # one step: granted on its first run, never queued
    assert task.done() and task.result().endpoint == A
    assert (t.held, t.in_flight) == (0, 1)


async def test_marking_ready_or_unready_twice_or_for_an_unknown_pod_changes_nothing() -> None:
    t = throttler(concurrency=1)
    t.set_endpoints([A])
    t.mark_ready(B)  # not one of the service's pods
    t.mark_unready(B)
    t.mark_ready(A)
    t.mark_ready(A)
    assert t.ready_count == 1
    t.mark_unready(A)
    t.mark_unready(A)
    assert t.ready_count == 0 and t.try_acquire() is None
    t.mark_ready(A)  # probed ready again: back in the pick list
    assert t.ready_count == 1 and t.try_acquire() is not None


async def test_a_waiter_that_gave_up_is_skipped_and_the_next_one_served() -> None:
    t = throttler(concurrency=1)
    t.set_endpoints([A])
    gone, waiting = asyncio.create_task(t.acquire()), asyncio.create_task(t.acquire())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert t.held == 1
    t.mark_ready(A)
    await asyncio.sleep(0)
    assert waiting.done() and waiting.result().endpoint == A and t.held == 0


async def test_new_settings_change_the_policy_limit_and_queue() -> None:
    t = throttler(concurrency=0, queue_limit=100)
    t.set_endpoints([A, B])
    t.mark_ready(A)
    t.mark_ready(B)
    # containerConcurrency 0 -> 1: first available with one slot per pod, never the no-limit policy.
    t.update_settings(ServiceSettings(ServiceKey("default", "hello"), (), None, 1, 5.0, 1))
    assert [pod.endpoint if pod else None for pod in (t.try_acquire(), t.try_acquire(), t.try_acquire())] == [A, B, None]
    waiting = asyncio.create_task(t.acquire())
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):  # the new queue limit of 1
        await t.acquire()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_a_round_robin_keeps_its_place_when_the_limit_is_unchanged() -> None:
    t = throttler(concurrency=10)
    t.set_endpoints([A, B])
    t.mark_ready(A)
    t.mark_ready(B)
    first = t.try_acquire()
    t.update_settings(ServiceSettings(ServiceKey("default", "hello"), (), None, 10, 1.0, 5))  # same limit
    second = t.try_acquire()
    assert (first.endpoint, second.endpoint) == (A, B)  # type: ignore[union-attr]


async def test_a_share_among_activator_replicas_limits_this_ones_slots() -> None:
    """containerConcurrency 3 over two activators: the first pod in endpoint order gives 2 slots to the
    replica at index 0 (activator.peers)."""
    t = throttler(concurrency=3)
    t.set_endpoints([A])
    t.mark_ready(A)
    t.set_share(Share(index=0, count=2))
    assert [t.try_acquire() is not None for _ in range(3)] == [True, True, False]
    t.set_share(ALONE)  # alone again: the whole limit of 3
    assert t.try_acquire() is not None and t.try_acquire() is None


async def test_h2c_streams_count_in_flight_and_in_the_occupancy() -> None:
    now = [0.0]
    t = Throttler(ServiceSettings(ServiceKey("default", "hello"), ()), clock=lambda: now[0])
    t.track_stream(+1)
    t.track_stream(+1)
    now[0] = 1.5
    t.track_stream(-1)
    assert t.in_flight == 1
    now[0] = 2.0
    t.track_stream(-1)
    assert t.in_flight == 0 and t.occupancy_seconds() == pytest.approx(2 * 1.5 + 0.5)
