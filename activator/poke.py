"""Tell the scaler the moment a service at zero gets a request, instead of waiting for a metrics scrape.

An activation starts with the first request that finds no ready pod and ends when no request is held any
more (the pods took them, or they timed out). One poke goes to every scaler replica per activation (on
Kubernetes, every ready pod of the scaler's Service: replicas decide alike only if each hears it), not
one per request: `POST {scaler_url}` + contract.SCALER_POKE_PATH. A scaler that cannot be reached (or
answers 5xx) is retried with exponential backoff until it accepts or the activation ends; a 4xx is the
scaler saying no (for instance it does not know the service), logged and not retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.core.services import ServiceKey

log = get_logger(__name__)

FIRST_RETRY_DELAY_S = 0.05
MAX_RETRY_DELAY_S = 2.0
REQUEST_TIMEOUT_S = 2.0


class Poker:
    def __init__(self, scaler_urls: Sequence[str]) -> None:
        self._urls = [url.rstrip("/") for url in scaler_urls]
        self._configured = list(self._urls)
        self._activations: dict[ServiceKey, list[asyncio.Task[None]]] = {}
        self._session: aiohttp.ClientSession | None = None
        #: Pokes a scaler accepted, per service (the pokes-sent counter).
        self.sent: dict[ServiceKey, int] = {}

    def set_urls(self, scaler_urls: Sequence[str]) -> None:
        """Poke these scalers from the next activation on (every replica, as found in Kubernetes); none
        known: the configured ones again."""
        self._urls = [url.rstrip("/") for url in scaler_urls] or self._configured

    def activate(self, key: ServiceKey) -> None:
        """A request for `key` found no ready pod: poke every scaler, unless this activation already did."""
        if key in self._activations or not self._urls:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        self._activations[key] = [
            asyncio.create_task(self._deliver(url, key), name=f"poke {key} {url}") for url in self._urls
        ]

    def end(self, key: ServiceKey) -> None:
        """No request is held for `key` any more: the next request without a pod starts a new activation."""
        for task in self._activations.pop(key, ()):
            task.cancel()  # only ones still retrying are running

    async def close(self) -> None:
        for key in list(self._activations):
            self.end(key)
        if self._session is not None:
            await self._session.close()

    async def _deliver(self, url: str, key: ServiceKey) -> None:
        assert self._session is not None
        target = url + contract.SCALER_POKE_PATH.format(namespace=key.namespace, name=key.name)
        delay = FIRST_RETRY_DELAY_S
        while True:
            try:
                async with self._session.post(target) as response:
                    if response.status < 300:
                        self.sent[key] = self.sent.get(key, 0) + 1
                        log.info("poked scaler", service=str(key), scaler=url)
                        return
                    if response.status < 500:
                        log.warning("scaler refused poke", service=str(key), scaler=url, status=response.status,
                                    body=(await response.text())[:200])
                        return
                    problem = f"status {response.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                problem = repr(error)
            log.warning("poke failed, retrying", service=str(key), scaler=url, error=problem, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
