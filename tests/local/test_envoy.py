"""`kapa up --envoy`: Envoy in front, programmed by the gateway from the scaler's decisions. With
target-burst-capacity 0 the scaler says "serve" as soon as a replica is ready, so requests go from Envoy
straight to the replicas, and the activator steps back in at zero."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from kapa import contract
from kapa.contract import knative_annotation
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
    annotations = {
        knative_annotation("target"): "10",
        knative_annotation("target-utilization-percentage"): "100",
        knative_annotation("target-burst-capacity"): "0",
        knative_annotation("window"): "10s",
        knative_annotation("panic-window-percentage"): "30",
    }
    up = await KapaUp.start(tmp_path, hello_services(annotations), extra_args=("--envoy",))
    try:
        await up.wait_fresh(1)
        await up.wait_for(lambda: bool(up.latest and up.latest.mode == contract.MODE_SERVE), 10, "serve mode")
        began = time.monotonic()
        load = asyncio.create_task(up.load(concurrency=50, duration_s=15))
        # Slower than through the activator: a new replica's load counts only once Prometheus has scraped it
        # twice, so the rise comes in two steps.
        await up.wait_replicas(5, 20)
        result = await load
        assert max(s.desired for s in up.since(began)) == 5
        assert result.errors == 0 and set(result.status_counts) == {200}, result.summary()
        assert all(s.mode == contract.MODE_SERVE for s in up.since(began) if s.ready > 0)
        await asyncio.sleep(2)  # a last scrape
        through_activator = await _activator_requests(up.prometheus_url)
        assert through_activator < 0.02 * result.responses, (through_activator, result.responses)
    finally:
        await up.stop()
