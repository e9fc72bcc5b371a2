"""Fixtures: the test app and the queue-proxy as real processes on loopback."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import pytest

from kapa.core import contract
from tests.support import KAPA, REPO, free_port, running, wait_for_http, wait_for_port


@dataclass(frozen=True)
class Proxy:
    """A running queue-proxy: its ports, its process and its log."""

    port: int
    admin_port: int
    metrics_port: int
    app_port: int
    process: Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self, path: str = contract.METRICS_PATH) -> dict[str, float]:
        """The exposition as {series (name + labels as printed): value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as response:
            text = response.read().decode()
        series: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                series[name] = float(value)
        return series

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the series of `name` whose labels include `labels`."""
        total = 0.0
        for series, value in self.metrics().items():
            base = series.split("{", 1)[0]
            if base == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += value
        return total


@contextmanager
def app_process(port: int) -> Iterator[Popen[bytes]]:
    with running([sys.executable, "-m", "tests.queue_proxy.app", str(port)]) as process:
        wait_for_port(port)
        yield process


@contextmanager
def queue_proxy(tmp_path: Path, app_port: int, wait_ready: bool = True, **env: str) -> Iterator[Proxy]:
    """Run `kapa queue-proxy` in front of `app_port` with extra env (no drain quiet period unless given)."""
    port, admin_port, metrics_port = free_port(), free_port(), free_port()
    full_env = {
        contract.ENV_QUEUE_SERVING_PORT: str(port),
        contract.ENV_USER_PORT: str(app_port),
        contract.ENV_ADMIN_PORT: str(admin_port),
        contract.ENV_METRICS_PORT: str(metrics_port),
        contract.ENV_BIND_ADDRESS: "127.0.0.1",
        contract.ENV_SERVING_NAMESPACE: "tests",
        contract.ENV_SERVING_SERVICE: "app",
        contract.ENV_DRAIN_SECONDS: "0",
        **env,
    }
    log = tmp_path / f"queue-proxy-{port}.log"
    with running([*KAPA, "queue-proxy"], env=full_env, log=log) as process:
        wait_for_port(admin_port)
        if wait_ready:
            wait_for_http(f"http://127.0.0.1:{admin_port}{contract.READY_PATH}")
        yield Proxy(port, admin_port, metrics_port, app_port, process, log)


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def app_port() -> Iterator[int]:
    port = free_port()
    with app_process(port):
        yield port


@pytest.fixture(scope="module")
def proxy(app_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A queue-proxy without a concurrency limit, shared by a module's tests."""
    with queue_proxy(tmp_path_factory.mktemp("qp"), app_port) as running_proxy:
        yield running_proxy


__all__ = ["REPO", "Proxy", "app_process", "get_json", "queue_proxy"]
