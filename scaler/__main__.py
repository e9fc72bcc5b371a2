"""`kapa scaler` (also `python -m scaler`): the scaler as a process, with HTTP and KEDA gRPC in front.

    kapa scaler --services services.yaml [--config config-autoscaler.yaml]
                [--kubernetes [--kubeconfig FILE] [--kube-namespace NS]] [--actuator none|keda|direct]
                [--prometheus-url http://127.0.0.1:9090] [--host 0.0.0.0] [--grpc-port 9095] [--http-port 9096]
                [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from kapa import contract
from kapa.log import configure, get_logger
from kapa.services import ServicesFileError
from scaler.catalog import FileCatalog
from scaler.config import AutoscalerConfig
from scaler.grpc_server import TlsFiles, start_grpc_server
from scaler.http_api import make_app
from scaler.loop import Scaler
from scaler.prometheus_source import PrometheusMetrics

log = get_logger("scaler")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kapa scaler", description="Knative's KPA over Prometheus, for KEDA.")
    parser.add_argument(
        "--services", type=Path, help="services file (re-read when it changes); not read with --kubernetes"
    )
    parser.add_argument("--kubernetes", action="store_true",
                        help="services are the Deployments enrolled with kapa.dev/enabled, ready pods come from "
                        "EndpointSlices, bad annotations become Events (in-cluster config, else --kubeconfig)")
    parser.add_argument("--kubeconfig", help="kubeconfig file for --kubernetes outside a cluster")
    parser.add_argument("--kube-namespace", help="with --kubernetes: one namespace only (default: all)")
    parser.add_argument("--actuator", choices=["none", "keda", "direct"],
                        default=os.environ.get("KAPA_ACTUATOR", "none"),
                        help="direct: patch each Deployment's scale (needs --kubernetes); keda: KEDA reads the "
                        "gRPC port; none: decide only (default: env KAPA_ACTUATOR, else none)")
    parser.add_argument("--scaler-address", default=os.environ.get("KAPA_SCALER_ADDRESS"),
                        help="with --kubernetes --actuator keda: HOST:PORT of this scaler's gRPC Service, which "
                        "the ScaledObjects it keeps point KEDA at (default: env KAPA_SCALER_ADDRESS)")
    parser.add_argument("--config", type=Path, help="config-autoscaler: flat YAML map or ConfigMap manifest")
    parser.add_argument("--prometheus-url", default="http://127.0.0.1:9090")
    parser.add_argument("--query-timeout", type=float, default=1.5, help="seconds before a query counts as failed")
    parser.add_argument("--host", default="0.0.0.0", help="address the HTTP and gRPC ports bind to")
    parser.add_argument("--grpc-port", type=int, default=contract.SCALER_GRPC_PORT)
    parser.add_argument("--http-port", type=int, default=contract.SCALER_HTTP_PORT)
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate for the gRPC port (enables TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle; clients must present a cert it signed (mTLS)")
    args = parser.parse_args(argv)
    if args.services is None and not args.kubernetes:
        parser.error("--services is required without --kubernetes")
    if args.actuator == "direct" and not args.kubernetes:
        parser.error("--actuator direct needs --kubernetes")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    return args


async def serve(args: argparse.Namespace) -> int:
    if args.config is not None:
        config, errors = AutoscalerConfig.load_file(args.config)
        for error in errors:
            log.warning("invalid config-autoscaler setting; using the default", key=error.key, error=error.message)
    else:
        config = AutoscalerConfig.default()
    metrics = PrometheusMetrics(args.prometheus_url, timeout_s=args.query_timeout)
    if args.kubernetes:
        from scaler.kubernetes import (
            DeploymentCatalog,
            EndpointSliceReadyPods,
            ScaleActuator,
            ScaledObjectActuator,
            api_client,
        )

        api = api_client(args.kubeconfig)
        deployments = DeploymentCatalog(api, config, args.kube_namespace)
        ready_pods = EndpointSliceReadyPods(api, args.kube_namespace)
        await deployments.start()
        await ready_pods.start()
        actuators: list[ScaleActuator | ScaledObjectActuator] = []
        if args.actuator == "direct":
            actuators.append(ScaleActuator(api, deployments))
        elif args.actuator == "keda" and args.scaler_address:
            actuators.append(ScaledObjectActuator(api, deployments, args.scaler_address, config))
        elif args.actuator == "keda":
            log.warning("actuator keda without --scaler-address: no ScaledObjects are kept; create them yourself "
                        "(kapa inject --scaled-objects)")
        scaler = Scaler(config, deployments, metrics, ready_pods=ready_pods, actuators=actuators)
    else:
        try:
            catalog = FileCatalog(args.services)
        except ServicesFileError as error:
            log.error("cannot start", error=str(error))
            return 2
        scaler = Scaler(config, catalog, metrics, ready_pods=metrics)
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None

    runner = web.AppRunner(make_app(scaler), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.http_port).start()
    grpc_server = await start_grpc_server(scaler, args.host, args.grpc_port, tls)
    scaler.start()
    log.info(
        "scaler running",
        http=f"{args.host}:{args.http_port}",
        grpc=f"{args.host}:{args.grpc_port}",
        prometheus=args.prometheus_url,
        services=len(scaler.services()),
        actuator=args.actuator,
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("scaler stopping")
    await scaler.stop()
    await grpc_server.stop(grace=1.0)
    await runner.cleanup()
    await metrics.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    configure()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
