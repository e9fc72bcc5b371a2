"""`kapa up --envoy`: Envoy in front, programmed by the gateway from the scaler's decisions. With
target-burst-capacity 0 the scaler says "serve" as soon as a replica is ready, so requests go from Envoy
straight to the replicas, and the activator steps back in at zero."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from kapa.core import contract
from kapa.core.contract import knative_annotation
from tests.local.harness import KapaUp, hello_services

pytestmark = pytest.mark.slow


async def _activator_requests(prometheus_url: str) -> float:
    query = (f'sum(increase({contract.REQUESTS}{{{contract.LABEL_COMPONENT}="{contract.COMPONENT_ACTIVATOR}"}}'
             "[40s]))")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{prometheus_url}/api/v1/query", params={"query": query}) as response:
            result = (await response.json())["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


async def test_envoy_serves_straight_to_the_replicas_and_scales(tmp_path: Path) -> None:
    """45 clients against target 10 need 5 replicas (4.5). The scaler may decide 6, never 7 or more:

    Prometheus stamps a sample with the time its scrape started while the queue-proxy computes the value
    when it serves the scrape, so a scrape served d s late adds d s of load to the increase rate() reads
    (tests/queue_proxy/test_prometheus.py shows it). A scrape served later than its 1 s timeout fails and
    gives no sample, so over a window whose samples span S s a reading is at most (S + 1) / S of the load.
    The 6 s panic window spans 5 s (4 s with a scrape at its edge failed): at most 45 x 1.25 = 56.25, which
    is 6; the 10 s stable window at most 45 x 10 / 9 = 50, which is 5. (50 clients, as this test had, need
    5 only as long as nothing reads high at all; a 3 s panic window, as it had, spans 2 s: up to 7.) The
    panic threshold is Knative's lowest, 110 %, so that panic, in which the count never goes down, holds the
    rise while new replicas take requests before Prometheus has scraped them.
    """
    annotations = {
        knative_annotation("target"): "10",
        knative_annotation("target-utilization-percentage"): "100",
        knative_annotation("target-burst-capacity"): "0",
        knative_annotation("window"): "10s",
        knative_annotation("panic-window-percentage"): "60",
        knative_annotation("panic-threshold-percentage"): "110",
    }
    up = await KapaUp.start(tmp_path, hello_services(annotations), extra_args=("--envoy",))
    try:
        await up.wait_fresh(1)
        await up.wait_for(lambda: bool(up.latest and up.latest.mode == contract.MODE_SERVE), 10, "serve mode")
        began = time.monotonic()
        load = asyncio.create_task(up.load(concurrency=45, duration_s=20))
        # Slower than through the activator: a new replica's load counts only once Prometheus has scraped it
        # twice, so the rise comes in two steps.
        await up.wait_for(lambda: bool(up.latest and up.latest.ready == up.latest.desired >= 5), 25,
                          "5 or more ready replicas")
        result = await load
        highest = max(s.desired for s in up.since(began))
        assert 5 <= highest <= 6, up.since(began)
        assert result.errors == 0 and set(result.status_counts) == {200}, result.summary()
        assert all(s.mode == contract.MODE_SERVE for s in up.since(began) if s.ready > 0)
        await asyncio.sleep(2)  # a last scrape
        through_activator = await _activator_requests(up.prometheus_url)
        assert through_activator < 0.02 * result.responses, (through_activator, result.responses)
        print(f"figures: 45 clients through Envoy: at most {highest} replicas desired; {result.responses} responses, "
              f"{through_activator:.0f} of them through the activator")
    finally:
        await up.stop()
