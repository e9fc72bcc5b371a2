"""Several activators share each pod's containerConcurrency: together never over the limit, none idle."""

from __future__ import annotations

import asyncio

import pytest

from kapa.core.services import Endpoint, ServiceKey

from activator.config import ServiceSettings
from activator.peers import ALONE, Share, pod_capacity, share_of
from activator.throttler import Throttler

PODS = [Endpoint(f"10.0.0.{index}", 8012) for index in range(1, 8)]


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 10, 100])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 7])
def test_the_parts_of_a_pod_add_up_to_its_limit_and_spread_over_the_replicas(limit: int, replicas: int) -> None:
    for pod in range(7):
        parts = [pod_capacity(limit, pod, Share(index, replicas)) for index in range(replicas)]
        assert sum(parts) == limit, parts  # type: ignore[arg-type]
        assert max(parts) - min(parts) <= 1, parts  # type: ignore[operator]
    # Each replica gets about as much of the whole service as any other.
    totals = [sum(pod_capacity(limit, pod, Share(index, replicas)) for pod in range(7)) for index in range(replicas)]  # type: ignore[misc]
    assert max(totals) - min(totals) <= 7, totals


def test_a_limit_below_the_replica_count_is_subsetting() -> None:
    owners = [[index for index in range(2) if pod_capacity(1, pod, Share(index, 2))] for pod in range(4)]
    assert owners == [[0], [1], [0], [1]]


def test_no_limit_stays_no_limit() -> None:
    assert pod_capacity(0, 3, Share(1, 4)) is None


def test_share_is_the_place_in_address_order_counting_itself_in() -> None:
    peers = [Endpoint("10.0.0.10", 8013), Endpoint("10.0.0.9", 8013)]
    assert share_of("10.0.0.10", peers) == Share(1, 2), "numeric order: .9 before .10"
    assert share_of("10.0.0.11", peers) == Share(2, 3), "not ready yet: counted in"
    assert share_of("10.0.0.9", []) == ALONE


async def test_two_throttlers_as_two_replicas_never_grant_a_pod_more_than_its_limit() -> None:
    settings = ServiceSettings(ServiceKey("default", "hello"), (), None, 2, 5.0, 100)
    replicas = [Throttler(settings), Throttler(settings)]
    for index, throttler in enumerate(replicas):
        throttler.set_share(Share(index, 2))
        throttler.set_endpoints([PODS[0]])
        throttler.mark_ready(PODS[0])
    granted = [throttler.try_acquire() for throttler in replicas for _ in range(3)]
    assert sum(pod is not None for pod in granted) == 2, "one slot each"
    waiting = asyncio.create_task(replicas[1].acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    # A second pod appears: in endpoint order it is pod 1, so each replica gets one slot of it too.
    for throttler in replicas:
        throttler.set_endpoints(PODS[:2])
        throttler.mark_ready(PODS[1])
    assert (await asyncio.wait_for(waiting, 1)).endpoint == PODS[1]


async def test_a_changed_limit_applies_to_known_pods_and_releases_waiters() -> None:
    settings = ServiceSettings(ServiceKey("default", "hello"), (), None, 1, 5.0, 100)
    throttler = Throttler(settings)
    throttler.set_endpoints([PODS[0]])
    throttler.mark_ready(PODS[0])
    assert throttler.try_acquire() is not None
    waiting = asyncio.create_task(throttler.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    throttler.update_settings(ServiceSettings(settings.key, (), None, 2, 5.0, 100))
    assert (await asyncio.wait_for(waiting, 1)).in_flight == 2
