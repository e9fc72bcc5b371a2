"""Whether this pod should get traffic: the app answers its readiness probe and the proxy is not draining.

Until the app is first ready it is probed every 50 ms with a 100 ms timeout (Knative's aggressive probing:
a cold start should not wait for a kubelet period). Once ready it is probed at the probe's period (1 s by
default) and counts as not ready after `failure_threshold` failures in a row, so an app that dies stops
getting traffic within a few seconds while one slow probe does not flap it.
"""

from __future__ import annotations

import asyncio

from kapa.core.log import get_logger
from queue_proxy.config import FIRST_READY_PROBE_INTERVAL_S, FIRST_READY_PROBE_TIMEOUT_S, ProbeConfig

log = get_logger(__name__)


class Readiness:
    """The pod's readiness, as the admin endpoint and the probe header report it."""

    def __init__(self) -> None:
        self.app_ready = False
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.app_ready and not self.draining


async def probe_once(probe: ProbeConfig, timeout_s: float) -> bool:
    """One probe: TCP connect, or HTTP GET answered with 200-399 within `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(probe.host, probe.port)
            try:
                if probe.kind == "tcp":
                    return True
                headers = "".join(f"{name}: {value}\r\n" for name, value in probe.headers)
                writer.write(
                    f"GET {probe.path} HTTP/1.1\r\nHost: {probe.host}:{probe.port}\r\n"
                    f"User-Agent: kapa-queue-proxy\r\n{headers}Connection: close\r\n\r\n".encode("latin-1")
                )
                status_line = await reader.readline()
                parts = status_line.split(b" ", 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                    return False
                return 200 <= int(parts[1]) < 400
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return False


async def keep_probing(probe: ProbeConfig, readiness: Readiness) -> None:
    """Run forever: update `readiness.app_ready` from the app's probe (see the module docstring)."""
    failures = 0
    while True:
        if not readiness.app_ready:
            if await probe_once(probe, min(FIRST_READY_PROBE_TIMEOUT_S, probe.timeout_s)):
                readiness.app_ready = True
                failures = 0
                log.info("app ready", probe=probe.kind, port=probe.port)
                continue
            await asyncio.sleep(FIRST_READY_PROBE_INTERVAL_S)
            continue
        await asyncio.sleep(probe.period_s)
        if await probe_once(probe, probe.timeout_s):
            failures = 0
            continue
        failures += 1
        if failures >= probe.failure_threshold:
            readiness.app_ready = False
            log.warning("app not ready", probe=probe.kind, port=probe.port, failures=failures)
