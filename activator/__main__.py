"""`kapa activator` / `python -m activator`: the command line, parsed once into typed settings."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping

import uvloop

from kapa.core import contract
from kapa.kube.client import api_client
from kapa.kube.deployments import DeploymentCatalog
from kapa.core.endpoints import EndpointSource, LocalEndpointSource
from kapa.kube.endpoints import DEFAULT_PORT_NAME, EndpointSourceError, KubernetesEndpointSource
from kapa.core.log import configure, get_logger
from kapa.relay import ClientTimeouts
from kapa.core.services import (
    DEFAULT_CLUSTER_DOMAIN, Endpoint, ServiceEntry, ServiceKey, ServicesFileError, load_services,
)

from activator.app import Activator, Listen, ServiceWatch
from activator.config import DEFAULT_QUEUE_LIMIT, CatalogSettings, settings_from_entries
from activator.peers import share_of
from activator.routing import RoutingError

log = get_logger("activator")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kapa activator",
        description="Reverse proxy for many services: holds requests while a service has no ready pod, pokes "
        "the scaler, and forwards each held request the moment a pod's queue-proxy answers ready.",
    )
    parser.add_argument("--services", help="services file (the format `kapa up` and the scaler read)")
    parser.add_argument("--kubernetes", action="store_true",
                        help="serve the Deployments enrolled with kapa.dev/enabled (watched; no services file) and "
                        "find pods in EndpointSlices")
    parser.add_argument("--cluster-domain", default=DEFAULT_CLUSTER_DOMAIN,
                        help="with --kubernetes: the cluster DNS domain of the hosts each service answers")
    parser.add_argument("--peers", type=ServiceKey.parse, metavar="NAMESPACE/NAME",
                        help="with --kubernetes: this activator's own Service; its ready pods share each pod's "
                        "containerConcurrency with this one")
    parser.add_argument("--pod-ip", default=os.environ.get("POD_IP"),
                        help="with --peers: this activator's pod address (default: env POD_IP)")
    parser.add_argument("--scaler-service", type=ServiceKey.parse, metavar="NAMESPACE/NAME",
                        help="with --kubernetes: poke every ready pod of the scaler's Service (its port \"http\"), "
                        "falling back to --scaler-url while none is known")
    parser.add_argument("--host", default=os.environ.get(contract.ENV_BIND_ADDRESS, contract.DEFAULT_BIND_ADDRESS),
                        help=f"address to listen on (env {contract.ENV_BIND_ADDRESS})")
    parser.add_argument("--port", type=int, default=contract.ACTIVATOR_PORT, help="proxy port")
    parser.add_argument("--admin-port", type=int, default=contract.ACTIVATOR_ADMIN_PORT,
                        help="ready, live, metrics and the local endpoint feed")
    parser.add_argument("--metrics-port", type=int, default=None, help="also serve metrics here")
    parser.add_argument("--scaler-url", action="append", default=[],
                        help="scaler HTTP base URL to poke; repeat for every scaler replica")
    parser.add_argument("--kube-namespace", default=None, help="watch one namespace only (default: all)")
    parser.add_argument("--endpoint-port-name", default=DEFAULT_PORT_NAME,
                        help="EndpointSlice port name of the queue-proxy serving port")
    parser.add_argument("--queue-limit", type=int, default=DEFAULT_QUEUE_LIMIT,
                        help="requests held per service beyond which new ones get 503")
    parser.add_argument("--header-read-timeout", type=float, default=float(contract.DEFAULT_HEADER_READ_TIMEOUT_SECONDS),
                        help="seconds a client may take to send a request head (then 408)")
    parser.add_argument("--idle-timeout", type=float, default=float(contract.DEFAULT_IDLE_TIMEOUT_SECONDS),
                        help="seconds a keep-alive client connection may sit idle before it is closed")
    parser.add_argument("--drain-delay", type=float, default=3.0,
                        help="seconds between readiness turning false and the listener closing on SIGTERM")
    args = parser.parse_args(argv)
    if (args.services is None) == (not args.kubernetes):
        parser.error("give either --services or --kubernetes")
    if args.peers is not None and not (args.kubernetes and args.pod_ip):
        parser.error("--peers needs --kubernetes and --pod-ip (or env POD_IP)")
    if args.scaler_service is not None and not args.kubernetes:
        parser.error("--scaler-service needs --kubernetes")
    if args.queue_limit < 1:
        parser.error("--queue-limit must be at least 1")
    if args.header_read_timeout <= 0 or args.idle_timeout <= 0:
        parser.error("--header-read-timeout and --idle-timeout must be positive")
    if args.drain_delay < 0:
        parser.error("--drain-delay must not be negative")
    return args


def _api_client() -> object:
    from kubernetes.config import ConfigException  # imported here: only the Kubernetes mode pays for it

    try:
        return api_client()
    except (ConfigException, OSError) as error:
        raise EndpointSourceError(f"no Kubernetes configuration (not in a cluster, no usable kubeconfig): {error}") from None


async def _serve(activator: Activator, listen: Listen, catalog: DeploymentCatalog | None) -> None:
    if catalog is not None:
        await catalog.start()
        # Not listening (so not ready) before the services are known: Envoy would get 404s from this replica.
        await catalog.listed.wait()
    try:
        await activator.run(listen)
    finally:
        if catalog is not None:
            catalog.close()


def _follow_catalog(activator: Activator, catalog: DeploymentCatalog, queue_limit: int) -> None:
    """Serve the catalog's services, re-applied after each change."""
    settings = CatalogSettings(queue_limit)

    def apply(entries: Mapping[ServiceKey, ServiceEntry]) -> None:
        try:
            activator.apply_settings(settings(entries.values()))
        except RoutingError as error:  # the catalog resolves host conflicts, so this is a bug worth a log line
            log.error("catalog not routable; keeping the previous services", error=str(error))

    catalog.subscribe(apply)


def _watch_services(activator: Activator, api: object, args: argparse.Namespace) -> None:
    """Follow the activator's own replicas (to split each pod's limit) and the scaler's (to poke each one),
    each through a watch of just that Service's EndpointSlices: they may live outside --kube-namespace."""
    def watch(key: ServiceKey, on_ready: Callable[[frozenset[Endpoint]], None]) -> None:
        activator.watch(ServiceWatch(KubernetesEndpointSource.of_service(api, key), key, on_ready))

    if args.peers is not None:
        own = args.pod_ip
        watch(args.peers, lambda ready: activator.set_share(share_of(own, ready)))
    if args.scaler_service is not None:
        watch(args.scaler_service, lambda ready: activator.poker.set_urls([f"http://{pod}" for pod in sorted(ready)]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure()
    catalog: DeploymentCatalog | None = None
    try:
        if args.kubernetes:
            api = _api_client()
            catalog = DeploymentCatalog(api, args.kube_namespace, args.cluster_domain)
            source: EndpointSource = KubernetesEndpointSource(api, args.kube_namespace, args.endpoint_port_name)
            settings = []
        else:
            settings = settings_from_entries(load_services(args.services), args.queue_limit)
            source = LocalEndpointSource()
        activator = Activator(
            settings, source, args.scaler_url, args.drain_delay,
            ClientTimeouts(args.header_read_timeout, args.idle_timeout),
        )
        if catalog is not None:
            _follow_catalog(activator, catalog, args.queue_limit)
            _watch_services(activator, api, args)
    except (ServicesFileError, RoutingError) as error:
        print(f"kapa activator: {error}", file=sys.stderr)
        return 2
    except EndpointSourceError as error:
        print(f"kapa activator: {error}", file=sys.stderr)
        return 1
    try:
        uvloop.run(_serve(activator, Listen(args.host, args.port, args.admin_port, args.metrics_port), catalog))
    except (EndpointSourceError, OSError) as error:  # OSError: a port already in use
        print(f"kapa activator: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
