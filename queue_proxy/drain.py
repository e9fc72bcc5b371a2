"""The graceful drain (Knative's): turn unready at once, keep serving, and call it done once no request has
arrived for the quiet period.

It starts on SIGTERM or when the app container's preStop hook calls WAIT_FOR_DRAIN_PATH on the admin port.
The hook matters on Kubernetes, which signals all of a pod's containers at once: the hook holds the app's
SIGTERM back until the queue-proxy has stopped receiving requests, so no request reaches an app that is
shutting down.
"""

from __future__ import annotations

import asyncio
import time

from kapa.core.log import get_logger
from queue_proxy.readiness import Readiness
from queue_proxy.stats import RequestStats

log = get_logger(__name__)

#: How often the quiet period is re-checked, so a shortened one (SIGINT) takes effect promptly.
_CHECK_INTERVAL_S = 0.1


class Drain:
    def __init__(self, readiness: Readiness, stats: RequestStats, quiet_period_s: float) -> None:
        self._readiness = readiness
        self._stats = stats
        self.quiet_period_s = quiet_period_s
        self._started = asyncio.Event()

    def begin(self, why: str, quiet_period_s: float | None = None) -> None:
        """Turn unready now; `quiet_period_s` shortens the quiet period (never lengthens it)."""
        if quiet_period_s is not None:
            self.quiet_period_s = min(self.quiet_period_s, quiet_period_s)
        if not self._readiness.draining:
            self._readiness.draining = True
            # The quiet period counts from now at the earliest, even after a long idle spell.
            self._stats.last_arrival = max(self._stats.last_arrival, time.monotonic())
            log.info("draining", why=why, quiet_period_s=self.quiet_period_s)
        self._started.set()

    async def quiet(self) -> None:
        """Return once the drain has begun and no request has arrived for the quiet period."""
        await self._started.wait()
        while (wait_s := self._stats.last_arrival + self.quiet_period_s - time.monotonic()) > 0:
            await asyncio.sleep(min(wait_s, _CHECK_INTERVAL_S))
