"""Two `kapa scaler` replicas over the same Prometheus give the same answers, tick by tick.

The second replica starts while the first is in the state that history decides: just after a burst, when
the service is still in panic (it holds its panic-high count for a stable window after the last panic
reading) and about to begin its scale-to-zero grace period. A replica deciding from scratch would drop
panic at once and start its grace period late; one that catches up from Prometheus's history decides
exactly as the first does. Both replicas observe only (no actuator): one fixed queue-proxy (with two, the
max-scale-down-rate would keep one pod for good), so the ready-pod count is the same for both, and every
difference comes from the decision state.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kapa.core import contract
from kapa.local.prometheus import PrometheusServer, ScrapeTarget
from tests.queue_proxy.conftest import queue_proxy
from tests.scaler.conftest import run_sync
from tests.support import KAPA, free_port, running, wait_for_http

pytestmark = pytest.mark.timeout(240)

#: Stable window 6 s (panic window 3 s), 2 in flight per pod, grace 6 s: a whole cycle in under a minute.
ANNOTATIONS = {
    contract.knative_annotation("window"): "6s",
    contract.knative_annotation("panic-window-percentage"): "50",
    contract.knative_annotation("target"): "2",
    contract.knative_annotation("target-utilization-percentage"): "100",
}
GLOBAL = {"scale-to-zero-grace-period": "6s"}
SLEEP_MS = 250
#: (requests in flight, seconds): steady for the pod, then a burst of 8x its capacity (panic), then idle.
PHASES = ((2, 8.0), (16, 6.0))
#: The second replica starts this long after the burst: inside the 6 s panic hold, before the grace period.
SECOND_REPLICA_AFTER_BURST_S = 2.0


def explain(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/v1/explain/default/hello", timeout=5) as response:
        return json.load(response)["decisions"]


class DecisionLog:
    """Every decision a replica made, by tick time, gathered from its explain history (10 ticks deep) by
    reading it more often than it fills."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.by_tick: dict[float, dict[str, Any]] = {}

    def read(self) -> None:
        for record in explain(self.url):
            if not record["poked"]:
                self.by_tick[record["at"]] = record


@pytest.fixture
def scalers(tmp_path: Path) -> Iterator[tuple[list[int], str, Any]]:
    """Sample app, a queue-proxy of default/hello, Prometheus; yields (proxy ports, first scaler's URL, a
    function starting the second scaler and returning it with its URL)."""
    (tmp_path / "services.yaml").write_text(yaml.safe_dump({"services": [{"name": "hello", "annotations": ANNOTATIONS}]}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(GLOBAL))
    app_port = free_port()
    pod = {contract.ENV_SERVING_NAMESPACE: "default", contract.ENV_SERVING_SERVICE: "hello"}
    with running([*KAPA, "sample-app", "--port", str(app_port)], log=tmp_path / "app.log"):
        wait_for_http(f"http://127.0.0.1:{app_port}{contract.READY_PATH}")
        with queue_proxy(tmp_path, app_port, **pod) as proxy:
            prometheus = PrometheusServer(workdir=tmp_path / "prometheus",
                                          targets=[ScrapeTarget(f"127.0.0.1:{proxy.metrics_port}")])
            run_sync(prometheus.start())

            def scaler(name: str) -> Any:
                http_port = free_port()
                command = [*KAPA, "scaler", "--services", str(tmp_path / "services.yaml"),
                           "--config", str(tmp_path / "config.yaml"), "--prometheus-url", prometheus.url,
                           "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(free_port())]
                return running(command, log=tmp_path / f"scaler-{name}.log"), f"http://127.0.0.1:{http_port}"

            try:
                process, url = scaler("a")
                with process:
                    wait_for_http(f"{url}/readyz", timeout_s=15)
                    yield [proxy.port], url, scaler
            finally:
                run_sync(prometheus.close())


async def _load(ports: list[int], in_flight: int, duration_s: float) -> int:
    """Keep `in_flight` requests of SLEEP_MS in flight over the queue-proxies for duration_s; all must succeed."""
    until = time.monotonic() + duration_s
    done = 0

    async def worker(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal done
        url = f"http://127.0.0.1:{ports[index % len(ports)]}/?sleep={SLEEP_MS}"
        while time.monotonic() < until:
            async with session.get(url) as response:
                assert response.status == 200, await response.text()
                done += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(i, session) for i in range(in_flight)))
    return done


def test_a_second_replica_started_mid_panic_decides_exactly_as_the_first(
    scalers: tuple[list[int], str, Any],
) -> None:
    ports, first_url, start_scaler = scalers
    first = DecisionLog(first_url)
    for in_flight, duration_s in PHASES:
        assert asyncio.run(_load(ports, in_flight, duration_s)) > 0
        first.read()
    time.sleep(SECOND_REPLICA_AFTER_BURST_S)
    process, second_url = start_scaler("b")
    with process:
        wait_for_http(f"{second_url}/readyz", timeout_s=15)
        second = DecisionLog(second_url)
        # Until both have been at zero for a few ticks: 6 s of panic hold, 6 s of stable window, 6 s of grace.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            first.read()
            second.read()
            settled = sorted(second.by_tick)[-3:]
            if len(settled) == 3 and all(second.by_tick[t]["desired_pods"] == 0 for t in settled):
                break
            time.sleep(4)
    common = sorted(set(first.by_tick) & set(second.by_tick))
    assert len(common) >= 8, (sorted(first.by_tick), sorted(second.by_tick))
    fields = ("desired_pods", "panic_mode", "active", "mode", "stale")
    pairs = [(at, tuple(first.by_tick[at][f] for f in fields), tuple(second.by_tick[at][f] for f in fields))
             for at in common]
    table = "\n".join(f"{at:.0f}: first {a} second {b}" for at, a, b in pairs) + f"\nlast: {second.by_tick[common[-1]]}"
    print(f"\n{fields}\n{table}")
    # What makes the comparison worth something: the second replica began in panic and went to zero.
    assert pairs[0][2][1] is True, f"the second replica did not start in panic\n{table}"
    assert pairs[-1][2][0] == 0, f"never reached zero\n{table}"
    assert all(a == b for _, a, b in pairs), f"the replicas disagree\n{table}"
