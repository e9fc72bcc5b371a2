"""With a real Prometheus scraping the scaling path every second, rate() of the concurrency counter is the
concurrency the app really had."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from kapa import contract
from kapa.prometheus_server import PrometheusServer, ScrapeTarget
from tests.queue_proxy.conftest import Proxy


async def _query(session: aiohttp.ClientSession, prometheus: PrometheusServer, query: str, at: float) -> list[dict]:
    async with session.get(f"{prometheus.url}/api/v1/query", params={"query": query, "time": f"{at:.3f}"}) as response:
        body = await response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


async def test_prometheus_rate_of_the_integral_is_the_concurrency(proxy: Proxy, tmp_path: Path) -> None:
    target = ScrapeTarget(f"127.0.0.1:{proxy.metrics_port}")
    async with PrometheusServer(workdir=tmp_path / "prometheus", targets=[target]) as prometheus:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def held(ms: int) -> None:
                async with session.get(f"{proxy.url}/sleep?ms={ms}") as response:
                    assert response.status == 200

            series_query = f'{contract.CONCURRENCY_SECONDS}{{job="{contract.SCRAPE_JOB_SCALING}"}}'
            deadline = time.monotonic() + 20
            while not await _query(session, prometheus, series_query, time.time()):  # first scrape
                assert time.monotonic() < deadline, "Prometheus never scraped the queue-proxy"
                await asyncio.sleep(0.2)
            # Three requests at the app for 6.5 s, plus a stream of 5 ms requests that scrapes would miss
            # if the counter were sampled rather than integrated.
            load = asyncio.gather(*(held(6500) for _ in range(3)))
            started = time.time()
            short_requests = 0
            while time.time() - started < 6.0:
                await held(5)
                short_requests += 1
                await asyncio.sleep(0.045)
            at = time.time() - 0.3
            (series,) = await _query(session, prometheus, f"rate({series_query}[4s])", at)
            await load
    rate = float(series["value"][1])
    assert series["metric"][contract.LABEL_SERVICE] == "app"
    # 3 held requests plus short ones each ~5 ms of every ~50 ms (measured at the client: an upper bound).
    assert 3.0 <= rate <= 3.0 + 0.25, rate
