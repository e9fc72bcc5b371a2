"""The predictive scaling policy end to end: `kapa up` with real Prometheus, activator, scaler and replicas.

A service with `kapa.dev/scaling-policy: predictive` gets a short burst of load every 38 s. Knative's keep-alive
is shortened (20 s stable window, 6 s grace period) but still shorter than the ~35 s silences, so under
Knative's rules every burst waits for a cold start (the sample app takes 3 s to start). The policy learns
from the load history in Prometheus: after four bursts it has three silences to go by, and before the fifth
it has the service at zero early and then a pre-warmed replica ready when the burst comes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from kapa.core.contract import (
    ANNOTATION_PREWARM_LEAD,
    ANNOTATION_SCALING_POLICY,
    knative_annotation,
)
from kapa.tools.load import LoadConfig, LoadResult, run_load
from tests.local.harness import HOST, KapaUp, hello_services

pytestmark = pytest.mark.slow

PERIOD_S = 38.0
BURST_REQUESTS = 30  # 2 at a time, 100 ms each: a 1.5 s burst on a ready replica
STARTUP_S = 3.0
ANNOTATIONS = {
    ANNOTATION_SCALING_POLICY: "predictive",
    ANNOTATION_PREWARM_LEAD: "8s",  # the replica's 3 s start-up, a process start and a margin
    knative_annotation("window"): "20s",
    knative_annotation("panic-window-percentage"): "30",
}
CONFIG = {"scale-to-zero-grace-period": "6s"}


async def burst(up: KapaUp) -> LoadResult:
    return await run_load(LoadConfig(f"{up.entry_url}/?sleep=100", concurrency=2, requests=BURST_REQUESTS,
                                     headers=(("Host", HOST),), timeout_s=30.0))


async def explanations(explain_url: str) -> list[str]:
    """Every reason of the scaler's last decisions (what `kapa explain` shows)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
            session.get(explain_url) as response:
        answer = await response.json()
    return [note for decision in answer["decisions"] for note in decision["explanation"]]


async def test_a_periodic_service_is_prewarmed_before_its_next_burst(tmp_path: Path) -> None:
    up = await KapaUp.start(tmp_path, hello_services(ANNOTATIONS, startup_delay_s=STARTUP_S), CONFIG)
    try:
        await up.wait_fresh(1, timeout_s=40)
        bursts: list[tuple[float, float, float]] = []  # (start, end, slowest response)
        notes_before_last: list[str] = []
        for index in range(5):
            if index == 4:
                notes_before_last = await explanations(up.explain_url)
            began = time.monotonic()
            result = await burst(up)
            assert result.status_counts == {200: BURST_REQUESTS}, result.summary()
            bursts.append((began, time.monotonic(), result.latencies_s[-1]))
            if index < 4:
                await asyncio.sleep(max(0.0, began + PERIOD_S - time.monotonic()))

        # Bursts 2-4 came after Knative's rules had scaled to zero: each waited for a cold start.
        assert all(slowest >= STARTUP_S for _, _, slowest in bursts[1:4]), bursts
        # Between the fourth and the fifth: zero early, then a replica asked for and ready before the burst.
        fourth_end, fifth_start = bursts[3][1], bursts[4][0]
        between = [s for s in up.since(fourth_end) if s.at <= fifth_start]
        zero_at = next((s.at for s in between if s.desired == 0), None)
        assert zero_at is not None, between
        assert any(s.at > zero_at and s.desired == 1 and s.ready == 1 for s in between), between
        assert any(note.startswith("predictive: pre-warmed 1 pod") for note in notes_before_last), notes_before_last
        # So the fifth burst found a replica: no request waited for a start-up.
        assert bursts[4][2] < STARTUP_S - 1.0, bursts
        print(f"figures: slowest response per burst {[round(slowest, 2) for _, _, slowest in bursts]} s; zero "
              f"{zero_at - fourth_end:.1f}s after the fourth burst, which Knative's rules hold 26 s")
    finally:
        await up.stop()
