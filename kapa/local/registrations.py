"""Telling the activator (and, with --envoy, the gateway) where a service's ready replicas are, and the
scaler how many there are, over HTTP.

The activator's local endpoint source takes the full set per service (PUT ACTIVATOR_ENDPOINTS_PATH with a JSON
list of "host:port"); the gateway takes `{"endpoints": [...]}` and, separately, `{"mode": ...}` as the
scaler decides it; the scaler process takes the count (READY_PODS_PATH). Every call carries a full value, so
a retried or repeated call is harmless and the last one always wins, and a part that restarted is brought up
to date by sending everything again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import aiohttp

from kapa.core import contract
from kapa.local.scaler_process import READY_PODS_PATH
from kapa.core.log import get_logger
from kapa.core.services import Endpoint, ServiceKey
from scaler.decision import Decision

log = get_logger(__name__)

#: How long a registration keeps retrying while its peer is unreachable (it may be restarting; once it is back,
#: kapa up sends it everything again anyway).
REGISTER_RETRY_S = 10.0
RETRY_INTERVAL_S = 0.1


class _Putter:
    """PUTs JSON, retrying while the peer is unreachable or answers 5xx; a 4xx is logged and dropped."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def put(self, key: ServiceKey, url: str, body: object) -> None:
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
                        log.error("update refused", service=str(key), url=url, status=response.status, body=text)
                        return
                    problem: object = f"{response.status} {text}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                problem = error
            if loop.time() > deadline:
                log.error("could not deliver an update", service=str(key), url=url,
                          error=str(problem))
                return
            await asyncio.sleep(RETRY_INTERVAL_S)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class ActivatorEndpoints(_Putter):
    """An EndpointSink that PUTs each service's ready endpoints to the activator's admin port."""

    def __init__(self, admin_url: str) -> None:
        super().__init__()
        self.admin_url = admin_url.rstrip("/")

    async def set_endpoints(self, key: ServiceKey, endpoints: Sequence[Endpoint]) -> None:
        path = contract.ACTIVATOR_ENDPOINTS_PATH.format(namespace=key.namespace, name=key.name)
        await self.put(key, self.admin_url + path, [str(endpoint) for endpoint in endpoints])


class ScalerReadyPods(_Putter):
    """An EndpointSink that tells the scaler process each service's count of ready replicas: the replicas the
    activator and Envoy may send requests to are exactly the ones the scaler counts."""

    def __init__(self, scaler_url: str) -> None:
        super().__init__()
        self.scaler_url = scaler_url.rstrip("/")

    async def set_endpoints(self, key: ServiceKey, endpoints: Sequence[Endpoint]) -> None:
        path = READY_PODS_PATH.format(namespace=key.namespace, name=key.name)
        await self.put(key, self.scaler_url + path, len(endpoints))


class GatewayRoutes(_Putter):
    """Keeps the gateway's routes in step: an EndpointSink for the replicas and an Actuator for the mode
    (serve straight to the replicas, or proxy through the activator), sent only when it changes."""

    def __init__(self, admin_url: str) -> None:
        super().__init__()
        self.admin_url = admin_url.rstrip("/")
        self._modes: dict[ServiceKey, str] = {}

    def _url(self, key: ServiceKey) -> str:
        return f"{self.admin_url}/v1/routes/{key.namespace}/{key.name}"

    async def set_endpoints(self, key: ServiceKey, endpoints: Sequence[Endpoint]) -> None:
        await self.put(key, self._url(key), {"endpoints": [str(endpoint) for endpoint in endpoints]})

    def forget_modes(self) -> None:
        """A restarted gateway starts with every service routed to the activator: send each mode again."""
        self._modes.clear()

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        for key, decision in decisions.items():
            if self._modes.get(key) != decision.mode:
                self._modes[key] = decision.mode
                await self.put(key, self._url(key), {"mode": decision.mode})
