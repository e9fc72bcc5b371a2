"""`kapa activator` / `python -m activator`: the command line, parsed once into typed settings."""

from __future__ import annotations

import argparse
import os
import sys

import uvloop

from kapa import contract
from kapa.endpoints import (
    DEFAULT_PORT_NAME,
    EndpointSource,
    EndpointSourceError,
    KubernetesEndpointSource,
    LocalEndpointSource,
)
from kapa.log import configure, get_logger
from kapa.relay import ClientTimeouts
from kapa.services import ServicesFileError, load_services

from activator.app import Activator, Listen
from activator.config import DEFAULT_QUEUE_LIMIT, settings_from_entries
from activator.routing import RoutingError

log = get_logger("activator")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kapa activator",
        description="Reverse proxy for many services: holds requests while a service has no ready pod, pokes "
        "the scaler, and forwards each held request the moment a pod's queue-proxy answers ready.",
    )
    parser.add_argument("--services", required=True, help="services file (the format `kapa up` and the scaler read)")
    parser.add_argument("--host", default=os.environ.get(contract.ENV_BIND_ADDRESS, contract.DEFAULT_BIND_ADDRESS),
                        help=f"address to listen on (env {contract.ENV_BIND_ADDRESS})")
    parser.add_argument("--port", type=int, default=contract.ACTIVATOR_PORT, help="proxy port")
    parser.add_argument("--admin-port", type=int, default=contract.ACTIVATOR_ADMIN_PORT,
                        help="ready, live, metrics and the local endpoint feed")
    parser.add_argument("--metrics-port", type=int, default=None, help="also serve metrics here")
    parser.add_argument("--scaler-url", action="append", default=[],
                        help="scaler HTTP base URL to poke; repeat for every scaler replica")
    parser.add_argument("--endpoint-source", choices=["local", "kubernetes"], default="local",
                        help="local: endpoints PUT on the admin port; kubernetes: EndpointSlice watch")
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
    if args.queue_limit < 1:
        parser.error("--queue-limit must be at least 1")
    if args.header_read_timeout <= 0 or args.idle_timeout <= 0:
        parser.error("--header-read-timeout and --idle-timeout must be positive")
    if args.drain_delay < 0:
        parser.error("--drain-delay must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure()
    try:
        settings = settings_from_entries(load_services(args.services), args.queue_limit)
        source: EndpointSource = (
            KubernetesEndpointSource(namespace=args.kube_namespace, port_name=args.endpoint_port_name)
            if args.endpoint_source == "kubernetes"
            else LocalEndpointSource()
        )
        activator = Activator(
            settings, source, args.scaler_url, args.drain_delay,
            ClientTimeouts(args.header_read_timeout, args.idle_timeout),
        )
    except (ServicesFileError, RoutingError) as error:
        print(f"kapa activator: {error}", file=sys.stderr)
        return 2
    try:
        uvloop.run(activator.run(Listen(args.host, args.port, args.admin_port, args.metrics_port)))
    except (EndpointSourceError, OSError) as error:  # OSError: a port already in use
        print(f"kapa activator: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
