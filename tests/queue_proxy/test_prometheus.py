"""With a real Prometheus scraping the scaling path every second, rate() of the concurrency counter is the
concurrency the app really had, give or take the lateness of the scrapes it is read from."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from kapa.core import contract
from kapa.local.prometheus import PrometheusServer, ScrapeTarget
from queue_proxy.metrics import metric_routes
from queue_proxy.stats import RequestStats
from tests.queue_proxy.conftest import Proxy
from tests.support import free_port


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


#: How late a "busy" endpoint answers every other scrape (within the scaling job's 1 s scrape timeout).
LATE_S = 0.6
#: Requests held in flight at the endpoint for its whole life.
IN_FLIGHT = 4


class LateScrapes:
    """A queue-proxy's scaling endpoint, with its real RequestStats and exposition, that answers every other
    scrape LATE_S late, as a queue-proxy does when its machine is busy. It records when it computed each value;
    with `stamp`, it also exposes that instant as the samples' timestamp (Prometheus text format)."""

    def __init__(self, stamp: bool) -> None:
        self.stats = RequestStats()
        for _ in range(IN_FLIGHT):
            self.stats.started(time.monotonic(), proxied=False)
        self.route = metric_routes(self.stats, lambda: 0, "default", "app")[contract.SCALING_METRICS_PATH]
        self.stamp = stamp
        self.scrapes = 0
        #: (value of the concurrency counter, wall-clock time it was computed at).
        self.served: list[tuple[float, float]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        if self.scrapes % 2 == 0:
            await asyncio.sleep(LATE_S)
        answer = self.route()
        # The collector brought the integral up to `last_change` (monotonic): that instant, on the wall clock.
        computed_at = time.time() - (time.monotonic() - self.stats.last_change)
        assert isinstance(answer, tuple)
        _, content_type, body = answer
        if self.stamp:
            at_ms = b" %d" % round(computed_at * 1000)
            lines = body.split(b"\n")
            body = b"\n".join(line + at_ms if line and not line.startswith(b"#") else line for line in lines)
        concurrency = next(float(line.rsplit(b" ", 2 if self.stamp else 1)[1]) for line in body.split(b"\n")
                           if line.startswith(contract.CONCURRENCY_SECONDS.encode()))
        self.served.append((concurrency, computed_at))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def computed_at(self, value: float) -> float:
        return next(at for served, at in self.served if served == value)


async def test_a_late_scrape_reads_high_as_prometheus_stamps_the_scrapes_start(tmp_path: Path) -> None:
    """Item 6 of issue 11, the mechanism: a value computed when the scrape is served, stamped by Prometheus
    with the time the scrape started, puts the lateness into the counter's increase: rate() over a window
    whose last sample was served d seconds later than its first reads (span + d) / span of the true value,
    and low by as much when the late one is first. Exposed with the instant it was computed, it reads
    exactly; but such a series gets no staleness marker when its target goes, so an instant query keeps
    finding it for the 5 minute lookback (the scaler's Prometheus ready-pod count is one), which is why the
    queue-proxy does not stamp its samples (the test in tests/local/test_envoy.py allows for the overshoot)."""
    endpoints = {"plain": LateScrapes(stamp=False), "stamped": LateScrapes(stamp=True)}
    runners: list[web.AppRunner] = []
    targets: dict[str, str] = {}
    for name, endpoint in endpoints.items():
        app = web.Application()
        app.router.add_get(contract.SCALING_METRICS_PATH, endpoint.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        targets[name] = f"127.0.0.1:{port}"
    scraped = [ScrapeTarget(address) for address in targets.values()]
    try:
        async with PrometheusServer(workdir=tmp_path / "prometheus", targets=scraped) as prometheus, \
                aiohttp.ClientSession() as session:
            def series(name: str) -> str:
                return f'{contract.CONCURRENCY_SECONDS}{{instance="{targets[name]}"}}'

            async def samples(name: str) -> list[tuple[float, float]]:
                """(timestamp, value) of every sample Prometheus holds of the endpoint's concurrency counter."""
                stored = await _query(session, prometheus, f"{series(name)}[30s]", time.time())
                return [(float(at), float(value)) for answer in stored for at, value in answer["values"]]

            deadline = time.monotonic() + 30
            while min([len(await samples(name)) for name in targets]) < 6:
                assert time.monotonic() < deadline, "Prometheus did not scrape both endpoints six times"
                await asyncio.sleep(0.5)

            async def rate_between(name: str, first: tuple[float, float], last: tuple[float, float]) -> float:
                """rate() over the window that holds exactly these two consecutive samples and ends at the last."""
                window_ms = round((last[0] - first[0]) * 1500)  # reaches halfway to the sample before `first`
                (answer,) = await _query(session, prometheus, f"rate({series(name)}[{window_ms}ms])", last[0])
                return float(answer["value"][1])

            plain = endpoints["plain"]
            stored = await samples("plain")
            lateness = [(plain.computed_at(value) - at, (at, value)) for at, value in stored]
            # Prometheus stamps a sample with the scrape's start (aligned to its schedule when within 2 ms),
            # whenever the value was computed.
            assert all(late >= -0.005 for late, _ in lateness), lateness
            assert any(late >= LATE_S for late, _ in lateness), lateness
            pairs = list(zip(lateness, lateness[1:]))
            late_last = next((a[1], b[1]) for a, b in pairs if b[0] - a[0] >= LATE_S / 2)
            late_first = next((a[1], b[1]) for a, b in pairs if a[0] - b[0] >= LATE_S / 2)
            for first, last in (late_last, late_first):
                true_span = plain.computed_at(last[1]) - plain.computed_at(first[1])
                reading = await rate_between("plain", first, last)
                assert reading == pytest.approx(IN_FLIGHT * true_span / (last[0] - first[0]), rel=1e-4)
            high, low = await rate_between("plain", *late_last), await rate_between("plain", *late_first)
            assert high > IN_FLIGHT * 1.2 and low < IN_FLIGHT / 1.2, (high, low)

            # Stamped with the instant it was computed, every window reads the true concurrency.
            stored = await samples("stamped")
            exact = [await rate_between("stamped", first, last) for first, last in zip(stored, stored[1:])]
            assert exact == pytest.approx([IN_FLIGHT] * len(exact), rel=5e-3)
            print(f"figures: {IN_FLIGHT} in flight, every other scrape {LATE_S} s late: rate() over a window ending on "
                  f"a late sample {high:.2f}, starting on one {low:.2f}; with the exposition stamped "
                  f"{min(exact):.3f}..{max(exact):.3f}")

            # But its series outlives its target: no staleness marker, the 5 minute lookback applies.
            prometheus.set_targets([])
            deadline = time.monotonic() + 30
            while await _query(session, prometheus, series("plain"), time.time()):
                assert time.monotonic() < deadline, "the plain series never went stale"
                await asyncio.sleep(0.5)
            assert await _query(session, prometheus, series("stamped"), time.time())
    finally:
        for runner in runners:
            await runner.cleanup()
