"""The scaler's HTTP side (SCALER_HTTP_PORT): the activator's pokes, explain, decisions, metrics, health.

    POST /v1/poke/{namespace}/{name}    demand signal: decide at once (202; 404 for an unknown service)
    GET  /v1/explain/{namespace}/{name} the service's configuration and last decisions, with reasons
    GET  /v1/decisions                  every service's latest decision, compact
    GET  /metrics                       kapa_scaler_* metrics
    GET  /healthz, /readyz              alive; ready once the first tick has decided
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from aiohttp import web

from kapa.core import contract
from kapa.core.services import ServiceKey
from scaler.loop import DecisionRecord, Scaler, UnknownService

SCALER_KEY: web.AppKey[Scaler] = web.AppKey("scaler", Scaler)


def _plain(value: object) -> object:
    """A JSON-able form of a config field value (keys, enums, tuples, mappings)."""
    if isinstance(value, ServiceKey):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list, frozenset, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def config_json(config: object) -> dict[str, object]:
    assert dataclasses.is_dataclass(config)
    return {field.name: _plain(getattr(config, field.name)) for field in dataclasses.fields(config)}


def record_json(record: DecisionRecord) -> dict[str, object]:
    return {"at": record.at, "poked": record.poked, **record.decision.to_json()}


def explain_json(scaler: Scaler, key: ServiceKey) -> dict[str, object]:
    """Everything `kapa explain` shows: configuration, whether metrics are stale, decisions newest first."""
    history = scaler.history(key)
    return {
        "service": str(key),
        "config": config_json(scaler.service_config(key)),
        "metrics_stale": scaler.metrics_stale(),
        "decisions": [record_json(record) for record in reversed(history)],
    }


def _key(request: web.Request) -> ServiceKey:
    return ServiceKey(request.match_info["namespace"], request.match_info["name"])


def _not_found(error: UnknownService) -> web.Response:
    return web.json_response({"error": str(error)}, status=404)


async def poke(request: web.Request) -> web.Response:
    scaler = request.app[SCALER_KEY]
    key = _key(request)
    try:
        decision = await scaler.poke(key)
    except UnknownService as error:
        return _not_found(error)
    body = {"service": str(key), "desired_pods": decision.desired_pods if decision is not None else None}
    return web.json_response(body, status=202)


async def explain(request: web.Request) -> web.Response:
    try:
        return web.json_response(explain_json(request.app[SCALER_KEY], _key(request)))
    except UnknownService as error:
        return _not_found(error)


async def decisions(request: web.Request) -> web.Response:
    scaler = request.app[SCALER_KEY]
    services: dict[str, object] = {}
    for key in sorted(scaler.services()):
        decision = scaler.latest(key)
        services[str(key)] = None if decision is None else {
            "desired_pods": decision.desired_pods,
            "ready_pods": decision.ready_pods,
            "mode": decision.mode,
            "panic_mode": decision.panic_mode,
            "stale": decision.stale,
            "stable_value": decision.stable_value,
            "panic_value": decision.panic_value,
            "target": decision.target,
        }
    return web.json_response({"metrics_stale": scaler.metrics_stale(), "services": services})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SCALER_KEY].telemetry.exposition()
    return web.Response(body=body, content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[SCALER_KEY].last_tick_at is None:
        return web.Response(status=503, text="no tick yet\n")
    return web.Response(text="ok\n")


def make_app(scaler: Scaler) -> web.Application:
    app = web.Application()
    app[SCALER_KEY] = scaler
    app.add_routes(
        [
            web.post(contract.SCALER_POKE_PATH, poke),
            web.get(contract.SCALER_EXPLAIN_PATH, explain),
            web.get("/v1/decisions", decisions),
            web.get(contract.METRICS_PATH, metrics),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
        ]
    )
    return app
