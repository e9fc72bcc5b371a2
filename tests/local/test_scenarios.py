"""Issue 5's scenarios, end to end: `kapa up` with real Prometheus, activator, scaler and replica processes,
driven by `kapa load` with the sample app at sleep=100.

Windows are shortened through the annotations so the suite stays bounded: a 10 s stable window with a 30 %
panic window (3 s: with Prometheus scraping every second a window needs a few samples), and a 6 s
scale-to-zero grace period (Knative's minimum) in the `--config` file.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kapa.core.contract import knative_annotation
from kapa.tools.load import LoadConfig, run_load
from tests.local.harness import HOST, KapaUp, hello_services

pytestmark = pytest.mark.slow

WINDOW_S = 10
GRACE_S = 6
FAST_WINDOWS = {knative_annotation("window"): f"{WINDOW_S}s", knative_annotation("panic-window-percentage"): "30"}
CONFIG = {"scale-to-zero-grace-period": f"{GRACE_S}s"}


def _annotations(**values: str) -> dict[str, str]:
    return {**FAST_WINDOWS, **{knative_annotation(key.replace("_", "-")): value for key, value in values.items()}}


async def test_target_10_at_full_utilisation_holds_5_then_scales_to_zero_and_wakes(tmp_path: Path) -> None:
    """Scenarios 1 and 3: -c 50 against target 10 at 100 % gives 5 replicas for as long as the load lasts;
    after it, the service goes to zero (stable window + grace period) and the next request still gets 200."""
    up = await KapaUp.start(tmp_path, hello_services(_annotations(target="10", target_utilization_percentage="100")),
                            CONFIG)
    try:
        await up.wait_fresh(1)
        began = time.monotonic()
        load = asyncio.create_task(up.load(concurrency=50, duration_s=25))
        await up.wait_replicas(5, 15)
        settled = time.monotonic()
        result = await load
        ended = time.monotonic()
        assert max(s.desired for s in up.since(began) if s.at <= ended) == 5
        held = [s for s in up.since(settled) if s.at <= ended]
        assert all(s.desired == 5 and s.ready == 5 for s in held), held
        assert ended - settled > 8
        assert result.errors == 0 and set(result.status_counts) == {200}, result.summary()

        await up.wait_replicas(0, WINDOW_S + GRACE_S + 15)
        assert up.latest is not None and up.latest.at - ended >= WINDOW_S, "scaled to zero before the window"
        at_zero = up.latest.at
        woken = await run_load(LoadConfig(f"{up.entry_url}/?sleep=100", requests=1, headers=(("Host", HOST),),
                                          timeout_s=30))
        assert woken.status_counts == {200: 1}, woken.summary()
        print(f"figures: 5 replicas {settled - began:.1f}s after the load began; {result.responses} responses, "
              f"p99 {result.latency_quantile_s(0.99) * 1000:.0f} ms; zero {at_zero - ended:.1f}s after it ended; "
              f"first request from zero answered in {woken.latencies_s[0] * 1000:.0f} ms")
    finally:
        await up.stop()


async def test_default_utilisation_settles_at_8(tmp_path: Path) -> None:
    """Scenario 1 at Knative's default 70 % utilisation: 50 / (10 x 0.7) = 7.1 rounds up to 8.

    8 needs an observed concurrency above 49.0, and 50 closed-loop clients keep 50 requests in flight only
    minus their own think time between a response and the next request. At sleep=100 that gap (a millisecond
    or two, more on a busy machine) is enough to measure 49.x and sometimes 7; at sleep=400 the same gap costs
    a quarter as much, so the figure Knative documents is what is measured.
    """
    up = await KapaUp.start(tmp_path, hello_services(_annotations(target="10")), CONFIG)
    try:
        await up.wait_fresh(1)
        load = asyncio.create_task(up.load(concurrency=50, duration_s=20, sleep_ms=400))
        await up.wait_replicas(8, 14)
        settled = time.monotonic()
        result = await load
        held = [s for s in up.since(settled) if s.at <= time.monotonic()]
        assert all(s.desired == 8 for s in held), held
        assert result.errors == 0 and set(result.status_counts) == {200}, result.summary()
    finally:
        await up.stop()


async def test_min_1_max_3_bounds_the_replicas(tmp_path: Path) -> None:
    """Scenario 2: min-scale 1, max-scale 3: never more than 3 under the load, and 1 stays after it."""
    up = await KapaUp.start(tmp_path, hello_services(_annotations(target="10", min_scale="1", max_scale="3")), CONFIG)
    try:
        await up.wait_fresh(1)
        began = time.monotonic()
        result = await up.load(concurrency=50, duration_s=15)
        ended = time.monotonic()
        assert max(s.desired for s in up.since(began)) == 3
        assert result.errors == 0 and set(result.status_counts) == {200}, result.summary()
        await up.wait_replicas(1, WINDOW_S + 10)
        # Past the window and the grace period, min-scale keeps one.
        await asyncio.sleep(WINDOW_S + GRACE_S + 2 - (time.monotonic() - ended))
        assert all(s.desired <= 3 for s in up.samples)
        assert up.latest is not None and (up.latest.desired, up.latest.ready) == (1, 1)
    finally:
        await up.stop()


async def test_burst_enters_panic_and_never_scales_down_in_it(tmp_path: Path) -> None:
    """Scenario 4: from 1 to 100 concurrent at once: panic mode, scaled up within a few seconds, and no
    step down for as long as panic lasts (a full stable window after the burst)."""
    up = await KapaUp.start(tmp_path, hello_services(_annotations(target="10", min_scale="1")), CONFIG)
    try:
        await up.wait_fresh(1)
        began = time.monotonic()
        load = asyncio.create_task(up.load(concurrency=100, duration_s=12))
        await up.wait_for(lambda: bool(up.latest and up.latest.panic_mode), 8, "panic mode")
        await up.wait_for(lambda: bool(up.latest and up.latest.desired >= 10), 8, "a scale-up to 10 or more")
        assert up.latest is not None and up.latest.at - began < 10
        await load
        await asyncio.sleep(4)
        in_panic = [s for s in up.since(began) if s.panic_mode]
        assert in_panic and all(b.desired >= a.desired for a, b in zip(in_panic, in_panic[1:])), in_panic
    finally:
        await up.stop()
