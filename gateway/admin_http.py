"""The gateway's HTTP admin API, for the local mode and tests (the scaler calls `Gateway` in-process).

    PUT /v1/routes/{namespace}/{name}   {"mode": "serve"|"proxy", "endpoints": ["10.0.0.7:8012", ...]}
        Either key may be left out to keep the current value. An unknown service is added with its default
        hosts. 200 with the service's route; 400 for a malformed body or name; 409 when another service
        already claims its hosts.
    DELETE /v1/routes/{namespace}/{name}
    PUT /v1/activator                   {"endpoints": ["127.0.0.1:8013"]}
    GET /v1/routes                      the routing state and what each connected Envoy ACKed or rejected
    GET /ready                          200 once serving
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.core.services import Endpoint, ServiceKey

from gateway.control import Gateway
from gateway.routing import ClaimConflict, RoutingError, ServiceRoute, check_endpoint, parse_endpoint, parse_mode

log = get_logger(__name__)

GATEWAY_KEY = web.AppKey("gateway", Gateway)


def route_json(route: ServiceRoute) -> dict[str, Any]:
    return {
        "namespace": route.key.namespace,
        "name": route.key.name,
        "hosts": list(route.hosts),
        "path_prefix": route.path_prefix,
        "mode": route.mode,
        "target": "pods" if route.serves_directly else "activator",
        "endpoints": [str(endpoint) for endpoint in sorted(route.endpoints)],
        "timeout_s": route.timeout_s,
    }


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RoutingError(f"body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise RoutingError("body must be a JSON object")
    return body


def _endpoints(value: object, ip_only: bool) -> list[Endpoint]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RoutingError('"endpoints" must be a list of "HOST:PORT" strings')
    endpoints = [parse_endpoint(item) for item in value]
    return [check_endpoint(endpoint) for endpoint in endpoints] if ip_only else endpoints


async def put_route(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    try:
        key = ServiceKey(request.match_info["namespace"], request.match_info["name"])
        body = await _json_body(request)
        unknown = set(body) - {"mode", "endpoints"}
        if unknown:
            raise RoutingError(f"unknown key(s): {', '.join(sorted(unknown))}")
        if not body:
            raise RoutingError('give "mode" and/or "endpoints"')
        mode = parse_mode(body["mode"]) if "mode" in body else None
        endpoints = _endpoints(body["endpoints"], ip_only=True) if "endpoints" in body else None
    except RoutingError as error:
        return _bad_request(str(error))
    try:
        gateway.set_service(key, mode, endpoints)
    except ClaimConflict as error:
        return web.json_response({"error": str(error)}, status=409)
    except RoutingError as error:
        return _bad_request(str(error))
    log.info("route set over http", service=str(key), mode=mode, endpoints=None if endpoints is None else len(endpoints))
    return web.json_response(route_json(gateway.state.services[key]))


async def delete_route(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    key = ServiceKey(request.match_info["namespace"], request.match_info["name"])
    if key not in gateway.state.services:
        return web.json_response({"error": f"no service {key}"}, status=404)
    gateway.remove_service(key)
    return web.json_response({"deleted": str(key)})


async def put_activator(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    try:
        body = await _json_body(request)
        endpoints = _endpoints(body.get("endpoints"), ip_only=False)  # the activator may be a DNS name
    except RoutingError as error:
        return _bad_request(str(error))
    gateway.set_activator(endpoints)
    return web.json_response({"endpoints": [str(endpoint) for endpoint in gateway.state.activator]})


async def get_routes(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    state = gateway.state
    return web.json_response(
        {
            "activator": [str(endpoint) for endpoint in state.activator],
            "services": [route_json(state.services[key]) for key in sorted(state.services)],
            "versions": {type_url: snap.version for type_url, snap in gateway.cache.snapshot().items()},
            "envoys": {
                node: {type_url: vars(status) for type_url, status in types.items()}
                for node, types in gateway.xds_status().items()
            },
        }
    )


async def get_ready(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def admin_app(gateway: Gateway) -> web.Application:
    app = web.Application()
    app[GATEWAY_KEY] = gateway
    app.router.add_put("/v1/routes/{namespace}/{name}", put_route)
    app.router.add_delete("/v1/routes/{namespace}/{name}", delete_route)
    app.router.add_put("/v1/activator", put_activator)
    app.router.add_get("/v1/routes", get_routes)
    app.router.add_get(contract.READY_PATH, get_ready)
    return app
