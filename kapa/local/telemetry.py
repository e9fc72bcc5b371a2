"""The two figures of the live view that the scaler does not decide with: requests/s and held requests.

Requests/s comes from the Prometheus the scaler reads (one query for all services), with the scaler's own
rps query: each request counted once, whether it went through the activator, straight to a replica, or
both. Held requests are a gauge of the activator's that Prometheus scrapes only every 15 s, so the view
reads it from the activator's own metrics endpoint, every refresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kapa.core import contract
from kapa.core.services import ServiceKey
from scaler.observations import WindowQuery
from scaler.prometheus_source import window_promql

#: Requests/s over this window: long enough to be steady with a 1 s scrape, short enough to follow load.
RPS_WINDOW_S = 5


@dataclass(frozen=True)
class Telemetry:
    #: None when Prometheus did not answer.
    rps: Mapping[ServiceKey, float] | None = field(default_factory=dict)
    #: None when the activator did not answer.
    held: Mapping[ServiceKey, int] | None = field(default_factory=dict)


class TelemetryReader:
    def __init__(self, prometheus_url: str, activator_metrics_url: str) -> None:
        self._query_url = f"{prometheus_url}/api/v1/query"
        self._activator_metrics_url = activator_metrics_url
        self._session: aiohttp.ClientSession | None = None

    async def read(self) -> Telemetry:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        rps, held = await asyncio.gather(self._rps(self._session), self._held(self._session))
        return Telemetry(rps, held)

    async def _rps(self, session: aiohttp.ClientSession) -> dict[ServiceKey, float] | None:
        query = window_promql(WindowQuery(contract.METRIC_RPS, RPS_WINDOW_S))
        try:
            async with session.get(self._query_url, params={"query": query}) as response:
                body = await response.json()
            return {
                ServiceKey(sample["metric"][contract.LABEL_NAMESPACE], sample["metric"][contract.LABEL_SERVICE]):
                    float(sample["value"][1])
                for sample in body["data"]["result"]
            }
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
            return None

    async def _held(self, session: aiohttp.ClientSession) -> dict[ServiceKey, int] | None:
        try:
            async with session.get(self._activator_metrics_url) as response:
                text = await response.text()
            held: dict[ServiceKey, int] = {}
            for family in text_string_to_metric_families(text):
                if family.name == contract.ACTIVATOR_HELD_REQUESTS:
                    for sample in family.samples:
                        key = ServiceKey(sample.labels[contract.LABEL_NAMESPACE], sample.labels[contract.LABEL_SERVICE])
                        held[key] = int(sample.value)
            return held
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
