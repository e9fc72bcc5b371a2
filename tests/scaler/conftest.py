"""Shared fixtures for the scaler tests: a real Prometheus scraping a test exporter with known rates."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kapa.core import contract
from kapa.local.prometheus import PrometheusServer, ScrapeTarget
from kapa.core.services import ServiceKey
from tests.support import REPO, free_port, running, wait_for_http

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from a synchronous (module-scoped) fixture on a private event loop."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def series(metric: str, key: ServiceKey) -> str:
    """A per-service sample's name and labels as the exposition format spells them."""
    return f'{metric}{{{contract.LABEL_NAMESPACE}="{key.namespace}",{contract.LABEL_SERVICE}="{key.name}"}}'


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.load(response)["data"]["result"]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s}s: {what}")
        time.sleep(interval_s)


class ExporterControl:
    """The test exporter process: set the series it exports, each growing at its rate."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"

    def set(self, series: list[dict[str, object]]) -> None:
        request = urllib.request.Request(
            f"http://{self.address}/series", data=json.dumps(series).encode(), method="PUT"
        )
        with urllib.request.urlopen(request, timeout=2):
            pass


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterControl]:
    port = free_port()
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    with running([sys.executable, "-m", "tests.scaler.exporter", str(port)], env={"PYTHONPATH": str(REPO)}, log=log):
        wait_for_http(f"http://127.0.0.1:{port}{contract.SCALING_METRICS_PATH}")
        yield ExporterControl(port)


@pytest.fixture(scope="module")
def prometheus(exporter: ExporterControl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the exporter every second; yields once it has scraped it."""
    server = PrometheusServer(workdir=Path(tmp_path_factory.mktemp("prometheus")), targets=[ScrapeTarget(exporter.address)])
    run_sync(server.start())
    try:
        wait_until(
            lambda: bool(query(server.url, f'up{{job="{contract.SCRAPE_JOB_SCALING}"}} == 1')), 15, "Prometheus scrapes the exporter"
        )
        yield server
    finally:
        run_sync(server.close())
