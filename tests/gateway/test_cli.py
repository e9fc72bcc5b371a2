"""`kapa gateway --run-envoy` as a process: services file, admin HTTP API, Envoy started and stopped by it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp

from kapa.core import contract
from tests.gateway.conftest import Upstream, eventually
from tests.support import KAPA, free_port, running, wait_for_http


async def test_kapa_gateway_serves_admin_api_and_runs_envoy(tmp_path: Path) -> None:
    activator, pod = await Upstream.start("activator"), await Upstream.start("pod-a")
    services = tmp_path / "services.yaml"
    services.write_text(
        "services:\n"
        "  - name: hello\n"
        "    hosts: [hello.localhost]\n"
        "    pathPrefix: /hello\n"
        "    annotations: {kapa.dev/timeout-seconds: '20'}\n"
        "  - name: world\n"
        "    pathPrefix: /world\n"
    )
    admin, listener, envoy_admin = free_port(), free_port(), free_port()
    log = tmp_path / "gateway.log"
    args = [
        *KAPA, "gateway", "--services", str(services), "--activator", str(activator.endpoint),
        "--xds-host", "127.0.0.1", "--xds-port", str(free_port()), "--admin-port", str(admin),
        "--listen-host", "127.0.0.1", "--listen-port", str(listener),
        "--run-envoy", "--envoy-admin-port", str(envoy_admin),
    ]
    admin_url, listener_url = f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{listener}"
    try:
        with running(args, log=log) as process:
            await asyncio.to_thread(wait_for_http, admin_url + contract.READY_PATH, 15)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

                async def fetch(path: str, host: str) -> tuple[int, str]:
                    async with session.get(listener_url + path, headers={"Host": host}) as response:
                        return response.status, await response.text()

                async def envoy_ready() -> bool:
                    try:
                        async with session.get(f"http://127.0.0.1:{envoy_admin}/ready") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await eventually(envoy_ready, timeout_s=15, what="envoy ready")
                assert await fetch("/", "hello.localhost") == (200, "activator")
                assert await fetch("/hello/x", "anything.example") == (200, "activator")  # by path prefix

                async def put(path: str, body: object) -> tuple[int, dict]:  # type: ignore[type-arg]
                    async with session.put(admin_url + path, json=body) as response:
                        return response.status, await response.json()

                serve = {"mode": contract.MODE_SERVE, "endpoints": [str(pod.endpoint)]}
                status, route = await put("/v1/routes/default/hello", serve)
                assert (status, route["target"], route["timeout_s"]) == (200, "pods", 20.0)
                assert (await put("/v1/routes/default/hello", {"mode": "fast"}))[0] == 400
                assert (await put("/v1/routes/default/hello", {"endpoints": ["pod.example:1"]}))[0] == 400
                assert (await put("/v1/routes/other/svc", {"mode": contract.MODE_SERVE, "extra": 1}))[0] == 400
                assert (await put("/v1/routes/other/bad%20name", {"mode": contract.MODE_SERVE}))[0] == 400
                # A new service whose default host another one claims as an extra host: a conflict.
                assert (await put("/v1/routes/localhost/hello", {"mode": contract.MODE_SERVE}))[0] == 409

                async def served_by_pod() -> bool:
                    return await fetch("/", "hello.default") == (200, "pod-a")

                await eventually(served_by_pod, what="serve mode via the admin API")
                # A path prefix wins over the Host, as in the activator: /world goes to world's route.
                assert await fetch("/world/x", "hello.localhost") == (200, "activator")
                async with session.get(admin_url + "/v1/routes") as response:
                    routes = await response.json()
                (envoy_status,) = routes["envoys"].values()
                assert {t: s["acked_version"] for t, s in envoy_status.items()} == routes["versions"]
                # Each type's last change reached Envoy and came back ACKed; the delay is measured, not guessed.
                assert all(0 < s["ack_delay_s"] < 30 for s in envoy_status.values()), envoy_status

            # SIGTERM to the gateway alone: it must stop its Envoy itself.
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 10) == 0
        (envoy_pid,) = re.findall(r"envoy started\" pid=(\d+)", log.read_text())
        assert not os.path.exists(f"/proc/{envoy_pid}"), "envoy outlived the gateway"
    finally:
        await activator.runner.cleanup()
        await pod.runner.cleanup()
