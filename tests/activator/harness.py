"""Running a real activator process on loopback for a test, with its services file and ports."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from kapa.core import contract
from kapa.core.services import Endpoint, ServiceKey

from tests.support import free_port, running


@dataclass
class RunningActivator:
    process: Any
    port: int
    admin_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def set_endpoints(self, session: aiohttp.ClientSession, key: ServiceKey, endpoints: Sequence[Endpoint]) -> None:
        path = contract.ACTIVATOR_ENDPOINTS_PATH.format(namespace=key.namespace, name=key.name)
        async with session.put(self.admin_url + path, json=[str(e) for e in endpoints]) as response:
            assert response.status == 204, await response.text()

    async def metrics(self, session: aiohttp.ClientSession, path: str = contract.METRICS_PATH) -> str:
        async with session.get(self.admin_url + path) as response:
            return await response.text()


async def wait_until_ready(url: str, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout_s}s")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def activator(
    tmp_path: Path, services: list[dict[str, Any]], *args: str, scaler_urls: Sequence[str] = ()
) -> AsyncIterator[RunningActivator]:
    services_file = tmp_path / "services.yaml"
    services_file.write_text(yaml.safe_dump({"services": services}))
    port, admin_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "activator", "--services", str(services_file), "--host", "127.0.0.1",
        "--port", str(port), "--admin-port", str(admin_port), "--drain-delay", "0.05", *args,
    ]
    for url in scaler_urls:
        command += ["--scaler-url", url]
    log = tmp_path / "activator.log"
    with running(command, log=log) as process:
        await wait_until_ready(f"http://127.0.0.1:{admin_port}{contract.READY_PATH}")
        yield RunningActivator(process, port, admin_port, log)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text exposition, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class Pod:
    """A real pod stand-in: `python -m queue_proxy` in front of `kapa sample-app`, on loopback ports."""

    serving_port: int
    metrics_port: int

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.serving_port)

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"http://127.0.0.1:{self.metrics_port}{contract.METRICS_PATH}") as response:
            return await response.text()


@asynccontextmanager
async def pod(tmp_path: Path, key: ServiceKey, startup_delay_s: float = 0.0) -> AsyncIterator[Pod]:
    """Start the app and its queue-proxy now; the queue-proxy turns ready once the app listens."""
    app_port, serving_port, metrics_port, admin_port = free_port(), free_port(), free_port(), free_port()
    env = {
        contract.ENV_QUEUE_SERVING_PORT: str(serving_port),
        contract.ENV_USER_PORT: str(app_port),
        contract.ENV_METRICS_PORT: str(metrics_port),
        contract.ENV_ADMIN_PORT: str(admin_port),
        contract.ENV_BIND_ADDRESS: "127.0.0.1",
        contract.ENV_SERVING_NAMESPACE: key.namespace,
        contract.ENV_SERVING_SERVICE: key.name,
        contract.ENV_DRAIN_SECONDS: "0",
    }
    app = [sys.executable, "-m", "kapa", "sample-app", "--port", str(app_port), "--startup-delay", str(startup_delay_s)]
    with running(app, log=tmp_path / f"app-{app_port}.log"), running(
        [sys.executable, "-m", "queue_proxy"], env=env, log=tmp_path / f"queue-proxy-{serving_port}.log"
    ):
        yield Pod(serving_port, metrics_port)
