"""Envoy's bootstrap, generated: who this Envoy is, its admin port, and where its xDS server is.

Everything else (listener, routes, clusters, endpoints) arrives over one ADS stream. The bootstrap is
built as the `Bootstrap` proto and printed as JSON (which Envoy reads as YAML), so a misspelt field fails
here, at generation, instead of at Envoy's start.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, backoff_pb2, base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, json_format

from kapa.core import contract

XDS_CLUSTER: Final = "kapa_xds"
DEFAULT_NODE_ID: Final = "kapa-gateway"
DEFAULT_NODE_CLUSTER: Final = "kapa"
#: Envoy refuses connections beyond this instead of running out of file descriptors.
MAX_DOWNSTREAM_CONNECTIONS: Final = 50_000


@dataclass(frozen=True)
class BootstrapConfig:
    xds_host: str = "127.0.0.1"
    xds_port: int = contract.XDS_PORT
    admin_host: str = "127.0.0.1"
    admin_port: int = contract.ENVOY_ADMIN_PORT
    node_id: str = DEFAULT_NODE_ID
    node_cluster: str = DEFAULT_NODE_CLUSTER
    #: HTTP/2 pings on the xDS connection. Without them, an xDS server that vanishes without a reset (its
    #: pod rescheduled to a new IP) leaves Envoy on a dead stream until TCP gives up, many minutes later.
    keepalive_interval_s: float = 30.0
    keepalive_timeout_s: float = 5.0
    #: Incremental xDS: each change sends only the resources that changed (see gateway.delta).
    delta: bool = False
    #: The xDS stream's reconnection backoff (see _xds_reconnect), and how often the server's name is resolved
    #: again (it moves when its pod does, where the name is not a stable ClusterIP).
    reconnect_base_s: float = 0.25
    reconnect_max_s: float = 2.0
    dns_refresh_s: float = 2.0


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _xds_reconnect(config: BootstrapConfig) -> base_pb2.RetryPolicy:
    """How soon Envoy opens its xDS stream again after losing it. Envoy's default backoff grows to 30 s, and
    all that time it keeps the routes of its last server: a service enrolled, or a mode decided, meanwhile
    would not reach it after an xDS server restart (a scaler rollout), nor at start if Envoy came up first."""
    return base_pb2.RetryPolicy(
        retry_back_off=backoff_pb2.BackoffStrategy(
            base_interval=_duration(config.reconnect_base_s), max_interval=_duration(config.reconnect_max_s)
        )
    )


def _xds_cluster(config: BootstrapConfig) -> cluster_pb2.Cluster:
    """The xDS server as a static cluster speaking HTTP/2 (gRPC); a DNS name is resolved by Envoy."""
    protocol = any_pb2.Any()
    protocol.Pack(
        http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                    connection_keepalive=protocol_pb2.KeepaliveSettings(
                        interval=_duration(config.keepalive_interval_s),
                        timeout=_duration(config.keepalive_timeout_s),
                    )
                )
            )
        )
    )
    address = address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=config.xds_host, port_value=config.xds_port)
    )
    return cluster_pb2.Cluster(
        name=XDS_CLUSTER,
        type=cluster_pb2.Cluster.STATIC if _is_ip(config.xds_host) else cluster_pb2.Cluster.STRICT_DNS,
        dns_refresh_rate=_duration(config.dns_refresh_s),
        connect_timeout=duration_pb2.Duration(seconds=1),
        typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protocol},
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=XDS_CLUSTER,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))
                    ]
                )
            ],
        ),
    )


def _overload_manager() -> overload_pb2.OverloadManager:
    limit = any_pb2.Any()
    limit.Pack(
        downstream_connections_pb2.DownstreamConnectionsConfig(max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS)
    )
    return overload_pb2.OverloadManager(
        resource_monitors=[
            overload_pb2.ResourceMonitor(name="envoy.resource_monitors.global_downstream_max_connections", typed_config=limit)
        ]
    )


def bootstrap(config: BootstrapConfig) -> bootstrap_pb2.Bootstrap:
    ads = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )
    return bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=config.node_id, cluster=config.node_cluster),
        admin=bootstrap_pb2.Admin(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=config.admin_host, port_value=config.admin_port)
            )
        ),
        overload_manager=_overload_manager(),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=[_xds_cluster(config)]),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=config_source_pb2.ApiConfigSource.DELTA_GRPC
                if config.delta
                else config_source_pb2.ApiConfigSource.GRPC,
                transport_api_version=config_source_pb2.V3,
                grpc_services=[
                    grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                            cluster_name=XDS_CLUSTER, retry_policy=_xds_reconnect(config)
                        )
                    )
                ],
                set_node_on_first_message_only=True,
            ),
            lds_config=ads,
            cds_config=ads,
        ),
    )


def bootstrap_json(config: BootstrapConfig) -> str:
    return json_format.MessageToJson(bootstrap(config), preserving_proto_field_name=True, indent=2)
