"""The activator's admin HTTP: readiness, liveness, metrics, and the local mode's endpoint feed.

Off the request path, so aiohttp is fine here. `PUT ACTIVATOR_ENDPOINTS_PATH` with a JSON list of
"host:port" replaces a service's endpoints in the LocalEndpointSource (full set, so repeating it is
harmless); with the Kubernetes source it answers 409, since there Kubernetes is the only truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from kapa.core import contract
from kapa.core.endpoints import EndpointSource, LocalEndpointSource
from kapa.core.services import Endpoint, ServiceKey


class BadEndpoints(ValueError):
    """The body of an endpoints PUT is not a JSON list of "host:port"."""


def parse_endpoints(body: bytes) -> list[Endpoint]:
    """Parse a JSON list of "host:port" (IPv6 as "[::1]:8012"); the error says which entry is wrong."""
    try:
        items = json.loads(body)
    except ValueError as error:
        raise BadEndpoints(f"body is not JSON: {error}") from None
    if not isinstance(items, list):
        raise BadEndpoints('expected a JSON list of "host:port"')
    endpoints = []
    for item in items:
        host, sep, port = item.rpartition(":") if isinstance(item, str) else ("", "", "")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadEndpoints(f'expected "host:port", got {item!r}')
        endpoints.append(Endpoint(host, int(port)))
    return endpoints


def admin_app(
    is_ready: Callable[[], bool],
    services: Collection[ServiceKey],
    source: EndpointSource,
    registry: CollectorRegistry,
    scaling_registry: CollectorRegistry,
) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: draining\n")

    async def live(_: web.Request) -> web.Response:
        return web.Response(text="alive\n")

    def exposition(selected: CollectorRegistry) -> Callable[[web.Request], object]:
        async def handler(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(selected), headers={"Content-Type": CONTENT_TYPE_LATEST})
        return handler

    async def put_endpoints(request: web.Request) -> web.Response:
        key = ServiceKey(request.match_info["namespace"], request.match_info["name"])
        if key not in services:
            return web.Response(status=404, text=f"service {key} is not in the activator's services file\n")
        if not isinstance(source, LocalEndpointSource):
            return web.Response(status=409, text="endpoints come from Kubernetes EndpointSlices here\n")
        try:
            endpoints = parse_endpoints(await request.read())
        except BadEndpoints as error:
            return web.Response(status=400, text=f"{error}\n")
        source.set(key, endpoints)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get(contract.READY_PATH, ready)
    app.router.add_get(contract.LIVE_PATH, live)
    app.router.add_get(contract.METRICS_PATH, exposition(registry))  # type: ignore[arg-type]
    app.router.add_get(contract.SCALING_METRICS_PATH, exposition(scaling_registry))  # type: ignore[arg-type]
    app.router.add_put(contract.ACTIVATOR_ENDPOINTS_PATH, put_endpoints)
    return app
