"""`kapa scaler` (also `python -m scaler`): the scaler as a process, with HTTP and KEDA gRPC in front.

    kapa scaler --services services.yaml [--config config-autoscaler.yaml]
                [--kubernetes [--kubeconfig FILE] [--kube-namespace NS] [--cluster-domain D]
                 [--xds-port 18000 --activator-service NS/NAME --activator HOST:PORT]] [--actuator none|keda|direct]
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

from kapa.core import contract
from kapa.core.log import configure, get_logger
from kapa.core.services import DEFAULT_CLUSTER_DOMAIN, ServiceKey, ServicesFileError
from gateway.admin_http import GATEWAY_KEY, get_routes
from gateway.control import Gateway, GatewayConfig
from gateway.follower import GatewayFollower
from gateway.resources import ListenerConfig
from gateway.routing import parse_endpoint
from scaler.catalog import FileCatalog
from scaler.config_file import load_config_file
from kapa.core.settings import AutoscalerConfig
from scaler.grpc_server import TlsFiles, start_grpc_server
from scaler.http_api import make_app
from scaler.loop import Actuator, Scaler
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
    parser.add_argument("--cluster-domain", default=DEFAULT_CLUSTER_DOMAIN,
                        help="with --kubernetes: the cluster DNS domain of the hosts each service answers")
    parser.add_argument("--xds-port", type=int,
                        help="with --kubernetes: also run the gateway here, the xDS server that routes Envoy by this "
                        "scaler's decisions, the catalog and EndpointSlices")
    parser.add_argument("--envoy-listen-port", type=int, default=contract.ENVOY_LISTENER_PORT,
                        help="with --xds-port: the port of Envoy's HTTP listener")
    parser.add_argument("--activator-service", type=ServiceKey.parse, metavar="NAMESPACE/NAME",
                        help="with --xds-port: the activator's Service, whose ready pods Envoy balances over")
    parser.add_argument("--activator", type=parse_endpoint, metavar="HOST:PORT",
                        help="with --xds-port: the activator's address while none of its pods is known ready")
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
    if args.xds_port is not None and not (args.kubernetes and args.activator):
        parser.error("--xds-port needs --kubernetes and --activator")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    return args


async def _kubernetes_scaler(
    args: argparse.Namespace, config: AutoscalerConfig, metrics: PrometheusMetrics,
    background: list[asyncio.Task[None]],
) -> tuple[Scaler, Gateway | None]:
    """The scaler over the enrolled Deployments, its actuators and, with --xds-port, the gateway; its
    watches' follower tasks go to `background`."""
    from kapa.kube.deployments import DeploymentCatalog
    from kapa.kube.endpoints import KubernetesEndpointSource
    from kapa.kube.client import api_client
    from kapa.kube.scaledobject import KEDA_API_VERSION, horizontal_pod_autoscaler, scaled_object
    from scaler.kubernetes import AnnotationReporter, EndpointSliceReadyPods, ObjectActuator, ScaleActuator

    api = api_client(args.kubeconfig)
    deployments = DeploymentCatalog(api, args.kube_namespace, args.cluster_domain, AnnotationReporter(api, config))
    ready_pods = EndpointSliceReadyPods(api, args.kube_namespace)
    actuators: list[Actuator] = []
    address = args.scaler_address
    if args.actuator == "direct":
        actuators.append(ScaleActuator(api, deployments))
        actuators.append(ObjectActuator(api, deployments, "autoscaling/v2", "horizontalpodautoscalers",
                                        lambda deployment: horizontal_pod_autoscaler(deployment, config)))
    elif args.actuator == "keda" and address:
        actuators.append(ObjectActuator(api, deployments, KEDA_API_VERSION, "scaledobjects",
                                        lambda deployment: scaled_object(deployment, address, config).manifest))
        actuators.append(ScaleActuator(api, deployments, leave_zero_to_keda=True))
    elif args.actuator == "keda":
        log.warning("actuator keda without --scaler-address: no ScaledObjects are kept; create them yourself "
                    "(kapa inject --scaled-objects)")
    gateway: Gateway | None = None
    if args.xds_port is not None:
        gateway = Gateway(GatewayConfig(args.host, args.xds_port, ListenerConfig(port=args.envoy_listen_port)),
                          activator=[args.activator])
        follower = GatewayFollower(gateway, args.activator_service, [args.activator])
        deployments.subscribe(follower.on_entries)
        actuators.append(follower)
        sources = [ready_pods.source]
        if args.activator_service is not None:  # its own watch: the activator may live outside --kube-namespace
            activators = KubernetesEndpointSource.of_service(api, args.activator_service)
            await activators.start()
            sources.append(activators)
        background += [asyncio.create_task(follower.follow(source), name="gateway-endpoints") for source in sources]
    await deployments.start()
    await ready_pods.start()
    # Nothing before the catalog is known: an empty first tick would tell KEDA nothing is enrolled, and an
    # Envoy connecting to a fresh replica (a restart, a rollout) would get an empty route table. Until
    # their first decision, services go to the activator, which is right whatever their state.
    await deployments.listed.wait()
    if gateway is not None:
        await gateway.start()
    return Scaler(config, deployments, metrics, ready_pods=ready_pods, actuators=actuators), gateway


async def serve(args: argparse.Namespace) -> int:
    if args.config is not None:
        config, errors = load_config_file(args.config)
        for error in errors:
            log.warning("invalid config-autoscaler setting; using the default", key=error.key, error=error.message)
    else:
        config = AutoscalerConfig.default()
    metrics = PrometheusMetrics(args.prometheus_url, timeout_s=args.query_timeout)
    background: list[asyncio.Task[None]] = []
    gateway: Gateway | None = None
    if args.kubernetes:
        scaler, gateway = await _kubernetes_scaler(args, config, metrics, background)
    else:
        try:
            catalog = FileCatalog(args.services)
        except ServicesFileError as error:
            log.error("cannot start", error=str(error))
            return 2
        scaler = Scaler(config, catalog, metrics, ready_pods=metrics)
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None

    app = make_app(scaler)
    if gateway is not None:
        app[GATEWAY_KEY] = gateway
        app.router.add_get("/v1/routes", get_routes)  # read-only: routes change only by decisions
    runner = web.AppRunner(app, access_log=None)
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
        xds_port=args.xds_port,
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("scaler stopping")
    await scaler.stop()
    for task in background:
        task.cancel()
    if gateway is not None:
        await gateway.stop()
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
