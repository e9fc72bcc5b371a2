"""Wiring: the serving, admin and metrics listeners, the background tasks, and the graceful drain.

Drain (Knative's): on SIGTERM readiness turns 503 at once, so the endpoint is taken out of rotation, but
requests keep being served, including new ones from clients that have not noticed yet, until none has
arrived for `drain_s`. Then the serving port closes, in-flight requests finish (bounded by the revision
timeout) and the process exits 0. SIGINT does the same without the quiet period.
"""

from __future__ import annotations

import asyncio
import signal
import time

from kapa import contract
from kapa.log import get_logger
from kapa.relay import RelayServer, Route, serve_routes
from queue_proxy.config import Config
from queue_proxy.handler import QueueProxyHandler
from queue_proxy.metrics import metric_routes
from queue_proxy.readiness import Readiness, keep_probing
from queue_proxy.stats import RequestStats

log = get_logger(__name__)

_TEXT = "text/plain; charset=utf-8"


def admin_routes(readiness: Readiness) -> dict[str, Route]:
    def ready() -> tuple[int, str, bytes]:
        if readiness.ready:
            return 200, _TEXT, b"ready\n"
        return 503, _TEXT, b"draining\n" if readiness.draining else b"app not ready\n"

    def live() -> tuple[int, str, bytes]:
        # Answered by the event loop that serves requests: if this answers, the proxy is working.
        return 200, _TEXT, b"alive\n"

    return {contract.READY_PATH: ready, contract.LIVE_PATH: live}


async def serve(config: Config) -> int:
    """Run the queue-proxy until drained; returns the exit code."""
    loop = asyncio.get_running_loop()
    stats = RequestStats()
    readiness = Readiness()
    handler = QueueProxyHandler(config, stats, readiness)
    relay = RelayServer(handler)
    host = config.bind_address
    serving = await loop.create_server(relay.protocol, host, config.serving_port, backlog=4096, reuse_address=True)
    admin = await serve_routes(host, config.admin_port, admin_routes(readiness))
    metrics = await serve_routes(
        host, config.metrics_port,
        metric_routes(stats, lambda: handler.queue_depth, config.namespace, config.service),
    )
    tasks = [
        loop.create_task(keep_probing(config.readiness_probe, readiness)),
        loop.create_task(handler.expire_forever()),
    ]
    log.info(
        "queue-proxy serving", port=config.serving_port, app=f"{config.upstream_host}:{config.user_port}",
        admin_port=config.admin_port, metrics_port=config.metrics_port,
        container_concurrency=config.container_concurrency, timeout_s=config.revision_timeout_s,
        service=f"{config.namespace}/{config.service}",
    )

    stop = asyncio.Event()
    quiet_period_s = config.drain_s

    def on_signal(signum: int) -> None:
        nonlocal quiet_period_s
        if signum == signal.SIGINT:
            quiet_period_s = 0.0
        if not readiness.draining:
            readiness.draining = True
            stats.last_arrival = max(stats.last_arrival, time.monotonic())
            log.info("draining", signal=signal.Signals(signum).name, quiet_period_s=quiet_period_s)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
    await stop.wait()

    # Serve until no request has arrived for the quiet period.
    while (wait_s := stats.last_arrival + quiet_period_s - time.monotonic()) > 0:
        await asyncio.sleep(min(wait_s, 0.1) if quiet_period_s == 0 else wait_s)
    serving.close()
    relay.close_idle()
    deadline = time.monotonic() + config.revision_timeout_s
    while stats.in_flight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    log.info("drained", unfinished=stats.in_flight)
    relay.close_all()
    for task in tasks:
        task.cancel()
    admin.close()
    metrics.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0)  # let the transports closed above deliver connection_lost
    return 0
