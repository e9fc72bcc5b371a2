"""The exported counters are exact: the concurrency integral's increase between two scrapes is the
request-seconds spent in between, whatever the scrape timing."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from kapa.core import contract
from tests.queue_proxy.conftest import Proxy

_CONCURRENCY = contract.CONCURRENCY_SECONDS


def _base_names(series: dict[str, float]) -> set[str]:
    names = set()
    for key in series:
        name = key.split("{", 1)[0]
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix) and name[: -len(suffix)] == contract.REQUEST_DURATION:
                name = contract.REQUEST_DURATION
        names.add(name)
    return names


def test_scaling_path_serves_only_the_scaling_metrics_and_all_are_labelled(proxy: Proxy) -> None:
    assert _base_names(proxy.metrics(contract.SCALING_METRICS_PATH)) == set(contract.SCALING_METRICS)
    everything = proxy.metrics()
    assert _base_names(everything) == {
        contract.CONCURRENCY_SECONDS, contract.PROXIED_CONCURRENCY_SECONDS, contract.REQUESTS,
        contract.PROXIED_REQUESTS, contract.REQUEST_DURATION, contract.REQUESTS_IN_FLIGHT, contract.QUEUE_DEPTH,
        contract.QUEUED_REQUESTS, contract.REJECTED_REQUESTS,
    }
    labels = (
        f'{contract.LABEL_NAMESPACE}="tests"', f'{contract.LABEL_SERVICE}="app"',
        f'{contract.LABEL_COMPONENT}="{contract.COMPONENT_QUEUE_PROXY}"',
    )
    assert all(all(label in series for label in labels) for series in everything)


async def _scrape(proxy: Proxy, name: str, **labels: str) -> float:
    return await asyncio.to_thread(proxy.metric, name, **labels)


async def _sleeps(
    session: aiohttp.ClientSession, proxy: Proxy, count: int, ms: int, headers: dict[str, str] | None = None
) -> float:
    """Run `count` concurrent requests that each sleep `ms` at the app; return the sum of their durations
    as the client saw them (the proxy's share of each is inside it, so this bounds its integral)."""

    async def one() -> float:
        start = time.monotonic()
        async with session.get(f"{proxy.url}/sleep?ms={ms}", headers=headers) as response:
            assert response.status == 200
            await response.read()
        return time.monotonic() - start

    return sum(await asyncio.gather(*(one() for _ in range(count))))


async def test_known_load_integrates_to_n_times_t(proxy: Proxy) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        before = await _scrape(proxy, _CONCURRENCY)
        requests_before = await _scrape(proxy, contract.REQUESTS, code_class="2xx")
        client_seconds = await _sleeps(session, proxy, count=4, ms=500)
        after = await _scrape(proxy, _CONCURRENCY)
        requests_after = await _scrape(proxy, contract.REQUESTS, code_class="2xx")
    assert 4 * 0.5 <= after - before <= client_seconds
    assert requests_after - requests_before == 4


async def test_a_5ms_request_between_two_scrapes_counts(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        before = await _scrape(proxy, _CONCURRENCY)
        client_seconds = await _sleeps(session, proxy, count=1, ms=5)
        after = await _scrape(proxy, _CONCURRENCY)
    assert 0.005 <= after - before <= client_seconds


async def test_rate_over_a_window_is_the_average_concurrency(proxy: Proxy) -> None:
    """Three requests span the whole window: the increase over it is 3 x its length."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        load = asyncio.create_task(_sleeps(session, proxy, count=3, ms=2000))
        await asyncio.sleep(0.2)
        # Each scrape happened somewhere between sending it and getting its answer.
        sent_first = time.monotonic()
        first = await _scrape(proxy, _CONCURRENCY)
        answered_first = time.monotonic()
        await asyncio.sleep(1.0)
        sent_second = time.monotonic()
        second = await _scrape(proxy, _CONCURRENCY)
        answered_second = time.monotonic()
        await load
    assert 3 * (sent_second - answered_first) <= second - first <= 3 * (answered_second - sent_first)


async def test_proxied_requests_are_integrated_separately(proxy: Proxy) -> None:
    marked = {contract.PROXY_HEADER: contract.PROXY_HEADER_VALUE}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        total_before = await _scrape(proxy, _CONCURRENCY)
        proxied_before = await _scrape(proxy, contract.PROXIED_CONCURRENCY_SECONDS)
        count_before = await _scrape(proxy, contract.PROXIED_REQUESTS)
        proxied_client_s, plain_client_s = await asyncio.gather(
            _sleeps(session, proxy, count=2, ms=300, headers=marked), _sleeps(session, proxy, count=3, ms=300)
        )
        total = await _scrape(proxy, _CONCURRENCY) - total_before
        proxied = await _scrape(proxy, contract.PROXIED_CONCURRENCY_SECONDS) - proxied_before
        count = await _scrape(proxy, contract.PROXIED_REQUESTS) - count_before
    assert 2 * 0.3 <= proxied <= proxied_client_s
    assert 5 * 0.3 <= total <= proxied_client_s + plain_client_s
    assert count == 2


async def test_duration_histogram_counts_every_request(proxy: Proxy) -> None:
    def histogram() -> tuple[float, float, float]:
        series = proxy.metrics()
        count = sum(v for k, v in series.items() if k.startswith(contract.REQUEST_DURATION + "_count"))
        under_100ms = sum(v for k, v in series.items() if k.startswith(contract.REQUEST_DURATION + "_bucket") and 'le="0.1"' in k)
        total = sum(v for k, v in series.items() if k.startswith(contract.REQUEST_DURATION + "_sum"))
        return count, under_100ms, total

    count0, fast0, sum0 = await asyncio.to_thread(histogram)
    async with aiohttp.ClientSession() as session:
        fast_client_s = await _sleeps(session, proxy, count=3, ms=0)
        slow_client_s = await _sleeps(session, proxy, count=2, ms=200)
    count1, fast1, sum1 = await asyncio.to_thread(histogram)
    assert count1 - count0 == 5
    assert fast1 - fast0 == 3 or fast_client_s > 0.1  # the 0 ms ones, unless the machine stalled them
    assert 2 * 0.2 <= sum1 - sum0 <= fast_client_s + slow_client_s
