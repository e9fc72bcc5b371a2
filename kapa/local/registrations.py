"""Telling the activator where a service's ready replicas are, over its admin HTTP port.

The activator's local endpoint source takes the full set per service (`PUT /v1/endpoints/{ns}/{name}` with a
JSON list of "host:port"), so a retried or repeated call is harmless and the last one always wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from kapa.log import get_logger
from kapa.services import Endpoint, ServiceKey

log = get_logger(__name__)

#: How long a registration keeps retrying while the activator is unreachable (it may be restarting).
REGISTER_RETRY_S = 10.0
RETRY_INTERVAL_S = 0.1


class ActivatorEndpoints:
    """An EndpointSink that PUTs each service's ready endpoints to the activator's admin port."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def set_endpoints(self, key: ServiceKey, endpoints: Sequence[Endpoint]) -> None:
        url = f"{self.admin_url}/v1/endpoints/{key.namespace}/{key.name}"
        body = [str(endpoint) for endpoint in endpoints]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REGISTER_RETRY_S
        while True:
            try:
                async with self._session.put(url, json=body) as response:
                    if response.status < 300:
                        return
                    text = await response.text()
                    if response.status < 500:
                        log.error("activator refused endpoints", service=str(key), status=response.status, body=text)
                        return
                    problem: object = f"{response.status} {text}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                problem = error
            if loop.time() > deadline:
                log.error("could not register endpoints with the activator", service=str(key), url=url,
                          error=str(problem))
                return
            await asyncio.sleep(RETRY_INTERVAL_S)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
