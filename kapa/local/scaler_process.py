"""The local mode's scaler as a process of its own, as on Kubernetes, where it is a pod of its own: it can die
and be restarted (kapa up restarts it) while Prometheus, the activator and the replicas go on.

    python -m kapa.local.scaler_process --services FILE --config-json JSON --prometheus-url URL
                                        --port PORT --decisions-url URL

It is the scaler's own loop and HTTP API (pokes, explain, /metrics, readiness) over the Prometheus `kapa up`
runs. What the scaler needs from the rest of the local stack comes and goes over loopback HTTP, with `kapa up`
in the place of the Kubernetes API:

- ready pods: `kapa up` PUTs each service's count of ready replicas (READY_PODS_PATH) whenever it changes and
  after every start of this process. A service whose count has not come yet gets no decision (a scaler that
  restarts in front of running replicas must not read them as zero); a poke still decides, as for zero.
- decisions: every decision is PUT to `kapa up` (`--decisions-url`, the DECISIONS_PATH of its control port),
  which starts and stops replicas and, with Envoy, switches the service's routing. The body is
  `decisions_json`; `decisions_from_json` reads it back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

from kapa.local.ports import LOOPBACK
from kapa.core.log import configure, get_logger
from kapa.core.services import ServiceKey, load_services
from scaler.catalog import StaticCatalog
from kapa.core.settings import AutoscalerConfig
from scaler.decision import Decision
from scaler.http_api import make_app
from scaler.loop import Scaler
from scaler.prometheus_source import PrometheusMetrics

log = get_logger("kapa.local.scaler")

READY_PODS_PATH = "/v1/local/ready-pods/{namespace}/{name}"
#: On kapa up's control port.
DECISIONS_PATH = "/v1/local/decisions"
#: A decision the scaler cannot hand over in this long fails the tick's actuation (logged, tried next tick).
DECISIONS_TIMEOUT_S = 15.0


def decisions_json(decisions: Mapping[ServiceKey, Decision]) -> dict[str, object]:
    return {str(key): decision.to_json() for key, decision in decisions.items()}


def decisions_from_json(body: Mapping[str, Mapping[str, object]]) -> dict[ServiceKey, Decision]:
    """The decisions `decisions_json` wrote. Decision.to_json names every field of Decision."""
    return {
        ServiceKey.parse(key): Decision(**{**fields, "explanation": tuple(fields["explanation"])})  # type: ignore
        for key, fields in body.items()
    }


class PushedReadyPods:
    """The scaler's ReadyPodCounter: the counts `kapa up` PUTs, None for a service it has not sent yet."""

    def __init__(self) -> None:
        self._counts: dict[ServiceKey, int] = {}

    def ready_pods(self, key: ServiceKey) -> int | None:
        return self._counts.get(key)

    async def handle_put(self, request: web.Request) -> web.Response:
        key = ServiceKey(request.match_info["namespace"], request.match_info["name"])
        count = await request.json()
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return web.json_response({"error": f"expected a count of ready pods, got {count!r}"}, status=400)
        self._counts[key] = count
        return web.Response(status=204)


class DecisionsToKapaUp:
    """The scaler's Actuator: hands every decision to `kapa up`. A failure raises, so the loop logs it and
    hands the next tick's decisions over again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    async def apply(self, decisions: Mapping[ServiceKey, Decision]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DECISIONS_TIMEOUT_S))
        async with self._session.put(self.url, json=decisions_json(decisions)) as response:
            response.raise_for_status()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kapa.local.scaler_process",
                                     description="kapa up's scaler (started by kapa up, not by hand)")
    parser.add_argument("--services", type=Path, required=True, help="the services file kapa up runs")
    parser.add_argument("--config-json", required=True, help="config-autoscaler as AutoscalerConfig's fields")
    parser.add_argument("--prometheus-url", required=True)
    parser.add_argument("--port", type=int, required=True, help="the scaler's HTTP API, on loopback")
    parser.add_argument("--decisions-url", required=True, help="where kapa up takes the decisions")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    config = AutoscalerConfig(**json.loads(args.config_json))
    catalog = StaticCatalog(entry.spec for entry in load_services(args.services))
    metrics = PrometheusMetrics(args.prometheus_url)
    ready_pods = PushedReadyPods()
    actuator = DecisionsToKapaUp(args.decisions_url)
    scaler = Scaler(config, catalog, metrics, ready_pods, actuators=[actuator])
    app = make_app(scaler)
    app.router.add_put(READY_PODS_PATH, ready_pods.handle_put)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, args.port).start()
    scaler.start()
    log.info("scaler running", port=args.port, prometheus=args.prometheus_url, services=len(scaler.services()))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await scaler.stop()
    await runner.cleanup()
    await actuator.close()
    await metrics.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    configure()
    return uvloop.run(serve(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
