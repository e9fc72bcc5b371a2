"""The two figures of the live view that the scaler does not decide with: requests/s and held requests.

Both come from the same Prometheus the scaler reads, one query each per refresh for all services.
Requests/s counts what the queue-proxies answered (the activator's forwards reach a queue-proxy too, so
counting the activator as well would count them twice).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from kapa import contract
from kapa.services import ServiceKey

#: Requests/s over this window: long enough to be steady with a 1 s scrape, short enough to follow load.
RPS_WINDOW_S = 5


@dataclass(frozen=True)
class Telemetry:
    rps: Mapping[ServiceKey, float] = field(default_factory=dict)
    held: Mapping[ServiceKey, float] = field(default_factory=dict)
    #: False when Prometheus did not answer.
    available: bool = True


class PrometheusTelemetry:
    def __init__(self, prometheus_url: str, held_metric: str | None) -> None:
        self._url = f"{prometheus_url}/api/v1/query"
        self._held_metric = held_metric
        self._session: aiohttp.ClientSession | None = None

    async def read(self) -> Telemetry:
        by = f"{contract.LABEL_NAMESPACE},{contract.LABEL_SERVICE}"
        rps_query = (f'sum by ({by}) (rate({contract.REQUESTS}{{{contract.LABEL_COMPONENT}!="'
                     f'{contract.COMPONENT_ACTIVATOR}"}}[{RPS_WINDOW_S}s]))')
        try:
            rps = await self._query(rps_query)
            held = await self._query(f"sum by ({by}) ({self._held_metric})") if self._held_metric else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
            return Telemetry(available=False)
        return Telemetry(rps, held)

    async def _query(self, query: str) -> dict[ServiceKey, float]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        async with self._session.get(self._url, params={"query": query}) as response:
            body = await response.json()
        if body.get("status") != "success":
            raise ValueError(body.get("error", "query failed"))
        values: dict[ServiceKey, float] = {}
        for sample in body["data"]["result"]:
            labels = sample["metric"]
            with contextlib.suppress(KeyError):
                values[ServiceKey(labels[contract.LABEL_NAMESPACE], labels[contract.LABEL_SERVICE])] = float(
                    sample["value"][1]
                )
        return values

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
