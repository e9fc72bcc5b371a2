"""`kapa gateway`: the xDS control plane for the Envoy gateway, with an HTTP admin API, optionally running Envoy.

    kapa gateway --services services.yaml --activator 127.0.0.1:8013 --run-envoy
    kapa gateway --write-bootstrap envoy.json --envoy-xds-host kapa-gateway.kapa-system

Services start in proxy mode (to the activator) until told otherwise, over the admin API
(see gateway.admin_http) or, in-process, by the scaler through `gateway.control.Gateway`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web

from kapa.core import contract
from kapa.core import log as kapa_log
from kapa.core.log import get_logger
from kapa.core.services import ServicesFileError, load_services

from gateway.admin_http import admin_app
from gateway.bootstrap import BootstrapConfig, bootstrap_json
from gateway.control import Gateway, GatewayConfig
from gateway.launcher import EnvoyProcess
from gateway.resources import ListenerConfig
from gateway.routing import RoutingError, parse_endpoint

log = get_logger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kapa gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=Path,
                        help="services file: the YAML `kapa up` and `kapa scaler` read (README: services file)")
    parser.add_argument(
        "--activator", action="append", metavar="HOST:PORT",
        help=f"activator address, repeatable (default 127.0.0.1:{contract.ACTIVATOR_PORT})",
    )
    parser.add_argument("--xds-host", default="0.0.0.0", help="address the xDS server binds (default: %(default)s)")
    parser.add_argument("--xds-port", type=int, default=contract.XDS_PORT, help="port Envoy's ADS stream connects to (default: %(default)s)")
    parser.add_argument("--admin-host", default="127.0.0.1", help="address the admin HTTP API binds (default: %(default)s)")
    parser.add_argument("--admin-port", type=int, default=contract.GATEWAY_ADMIN_PORT,
                        help="port of the admin HTTP API (routes, modes, readiness) (default: %(default)s)")
    parser.add_argument("--listen-host", default="0.0.0.0", help="address Envoy's HTTP listener binds (default: %(default)s)")
    parser.add_argument("--listen-port", type=int, default=contract.ENVOY_LISTENER_PORT,
                        help="port of Envoy's HTTP listener, where clients send requests (default: %(default)s)")
    parser.add_argument("--run-envoy", action="store_true", help="also run Envoy, configured by this server")
    parser.add_argument("--envoy-admin-port", type=int, default=contract.ENVOY_ADMIN_PORT,
                        help="port of Envoy's own admin interface (with --run-envoy or --write-bootstrap) (default: %(default)s)")
    parser.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads (default: %(default)s)")
    parser.add_argument(
        "--envoy-xds-host", default="127.0.0.1", help="address (IP or DNS name) at which Envoy reaches this server (default: %(default)s)"
    )
    parser.add_argument("--node-id", default=BootstrapConfig.node_id, help="Envoy's node id in the bootstrap (default: %(default)s)")
    parser.add_argument(
        "--xds-delta", action="store_true",
        help="have Envoy use incremental (delta) xDS: only changed resources are sent (the server speaks both)",
    )
    parser.add_argument("--write-bootstrap", type=Path, metavar="FILE", help="write Envoy's bootstrap and exit")
    return parser


def _bootstrap_config(args: argparse.Namespace) -> BootstrapConfig:
    return BootstrapConfig(
        xds_host=args.envoy_xds_host, xds_port=args.xds_port, admin_port=args.envoy_admin_port, node_id=args.node_id,
        delta=args.xds_delta,
    )


async def _serve(args: argparse.Namespace, gateway: Gateway) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await gateway.start()
    runner = web.AppRunner(admin_app(gateway), access_log=None)
    await runner.setup()
    envoy: EnvoyProcess | None = None
    code = 0
    try:
        await web.TCPSite(runner, args.admin_host, args.admin_port).start()
        log.info("gateway admin listening", address=f"{args.admin_host}:{args.admin_port}")
        waiters = [asyncio.create_task(stopping.wait())]
        if args.run_envoy:
            envoy = EnvoyProcess(_bootstrap_config(args), concurrency=args.envoy_concurrency)
            await envoy.start()
            waiters.append(asyncio.create_task(envoy.wait()))
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not stopping.is_set():
            log.error("envoy exited on its own", log_tail=envoy.log_tail() if envoy else "")
            code = 1
    finally:
        if envoy is not None:
            await envoy.stop()
        await runner.cleanup()
        await gateway.stop()
    return code


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    kapa_log.configure()
    if args.write_bootstrap is not None:
        args.write_bootstrap.write_text(bootstrap_json(_bootstrap_config(args)))
        return 0
    try:
        services = load_services(args.services) if args.services else []
        activator = [parse_endpoint(text) for text in args.activator or [f"127.0.0.1:{contract.ACTIVATOR_PORT}"]]
        gateway = Gateway(
            GatewayConfig(args.xds_host, args.xds_port, ListenerConfig(args.listen_host, args.listen_port)),
            services,
            activator,
        )
    except (ServicesFileError, RoutingError) as error:
        print(f"kapa gateway: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, gateway))
    except (OSError, RuntimeError, TimeoutError) as error:  # a port in use, Envoy failing to start
        log.error("gateway failed", error=str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
