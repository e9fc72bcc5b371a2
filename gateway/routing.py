"""The gateway's routing model: which services exist, where each one's traffic goes, and to whom.

Pure data. The scaler's decisions and the endpoint source change a `RoutingState` through its `with_*`
methods, each of which returns a new, validated state; `gateway.resources` turns a state into Envoy
configuration. Nothing here does I/O, so "why does Host X go to the activator?" is answered by reading
one frozen object.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Literal, get_args

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.core.settings import sidecar_settings
from kapa.core.services import Endpoint, ServiceEntry, ServiceKey, ServiceSpec, parse_host

log = get_logger(__name__)

#: "serve" (contract.MODE_SERVE): requests go straight to the service's pods. "proxy" (contract.MODE_PROXY):
#: they go to the activator, which holds them while the service is at zero and buffers bursts beyond the
#: pods' capacity (Knative's modes). Spelled out here only because a Literal type needs the strings.
Mode = Literal["serve", "proxy"]
MODES: Final[tuple[Mode, ...]] = get_args(Mode)
assert set(MODES) == {contract.MODE_SERVE, contract.MODE_PROXY}
#: A service nobody has decided about yet is at zero as far as we know: the activator is the safe target.
DEFAULT_MODE: Final[Mode] = contract.MODE_PROXY


class RoutingError(ValueError):
    """A change that would make the routing ambiguous or unusable by Envoy (a clear message, no change)."""


class ClaimConflict(RoutingError):
    """A Host or path prefix that another service already claims."""


def parse_mode(value: object) -> Mode:
    if value not in MODES:
        raise RoutingError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_endpoint(endpoint: Endpoint) -> Endpoint:
    """Pod endpoints reach Envoy through EDS, which takes IP addresses only (no DNS names)."""
    try:
        ipaddress.ip_address(endpoint.host)
    except ValueError:
        raise RoutingError(f"endpoint {endpoint} must be an IP address and port") from None
    if not 0 < endpoint.port < 65536:
        raise RoutingError(f"endpoint {endpoint} has no valid port")
    return endpoint


def normalize_hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    """Hosts lower-cased (Envoy and HTTP match them case-insensitively) and de-duplicated, in order.

    Envoy rejects a route table that lists a domain twice, even within one service, so duplicates between a
    service's default hosts and its extra hosts must go.
    """
    try:
        return tuple(dict.fromkeys(parse_host(host) for host in hosts))
    except ValueError as error:
        raise RoutingError(str(error)) from None


def parse_endpoint(text: str) -> Endpoint:
    """Parse `HOST:PORT` (`[v6]:PORT` for IPv6) into an Endpoint; the host may be a DNS name."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RoutingError(f"expected HOST:PORT, got {text!r}")
    return Endpoint(host, int(port))


def timeout_from_annotations(spec: ServiceSpec) -> float:
    """The service's request timeout (Knative's timeoutSeconds), read as every part reads it
    (kapa.core.settings.sidecar_settings). A malformed value costs only this key: it is logged with the
    service and the default is used."""
    settings, errors = sidecar_settings(spec)
    for error in errors:
        if error.key == contract.ANNOTATION_TIMEOUT_SECONDS:
            log.warning("invalid annotation, using the default", service=error.service, key=error.key,
                        error=error.message)  # fmt: skip
    return settings.timeout_s


@dataclass(frozen=True)
class ServiceRoute:
    """One service as the gateway sees it: how to recognise its requests and where to send them."""

    key: ServiceKey
    #: Host header values (port ignored) that select this service.
    hosts: tuple[str, ...]
    #: Requests whose path starts with this select the service whatever their Host.
    path_prefix: str | None = None
    mode: Mode = DEFAULT_MODE
    #: The pods' queue-proxy serving ports.
    endpoints: frozenset[Endpoint] = frozenset()
    timeout_s: float = float(contract.DEFAULT_REVISION_TIMEOUT_SECONDS)

    @property
    def serves_directly(self) -> bool:
        """True when requests go to the pods. "serve" with no pod would answer 503 (no healthy upstream);
        the activator holds such requests instead, so an early or stale "serve" never loses one."""
        return self.mode == contract.MODE_SERVE and bool(self.endpoints)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "hosts", normalize_hosts(self.hosts))
        except RoutingError as error:
            raise RoutingError(f"service {self.key}: {error}") from None


def route_for_entry(entry: ServiceEntry) -> ServiceRoute:
    """A services-file entry as a route: its hosts and prefix, its timeout, no pod yet, proxy mode."""
    return ServiceRoute(entry.spec.key, entry.hosts, entry.path_prefix, timeout_s=timeout_from_annotations(entry.spec))


@dataclass(frozen=True)
class RoutingState:
    """Every service's route plus the activator's addresses. Replace, never mutate."""

    services: Mapping[ServiceKey, ServiceRoute] = field(default_factory=dict)
    #: Where the activator listens (IP or DNS name: the activator cluster resolves names itself).
    activator: tuple[Endpoint, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", MappingProxyType(dict(self.services)))

    def with_route(self, route: ServiceRoute) -> RoutingState:
        """The state with `route` added or replaced; refuses a Host or path prefix another service owns.

        Returns this very state when nothing changes, so callers can tell a no-op by identity.
        """
        current = self.services.get(route.key)
        if current == route:
            return self
        for endpoint in route.endpoints:
            check_endpoint(endpoint)
        if current is None or (current.hosts, current.path_prefix) != (route.hosts, route.path_prefix):
            self._check_claims(route)
        return replace(self, services={**self.services, route.key: route})

    def _check_claims(self, route: ServiceRoute) -> None:
        for other in self.services.values():
            if other.key == route.key:
                continue
            shared = set(route.hosts) & set(other.hosts)
            if shared:
                raise ClaimConflict(f"{route.key} and {other.key} both claim host(s) {', '.join(sorted(shared))}")
            if route.path_prefix is not None and route.path_prefix == other.path_prefix:
                raise ClaimConflict(f"{route.key} and {other.key} both claim path prefix {route.path_prefix}")

    def with_service(
        self, key: ServiceKey, mode: Mode | None = None, endpoints: Iterable[Endpoint] | None = None
    ) -> RoutingState:
        """Change a service's mode and/or endpoints; an unknown service is added with its default hosts."""
        route = self.services.get(key) or ServiceRoute(key, key.hosts())
        if mode is not None:
            route = replace(route, mode=parse_mode(mode))
        if endpoints is not None:
            route = replace(route, endpoints=frozenset(endpoints))
        return self.with_route(route)

    def with_catalog(self, routes: Iterable[ServiceRoute]) -> RoutingState:
        """The state serving exactly `routes` (a whole catalog): services not among them are dropped, and
        each kept one keeps its mode and endpoints. Claims are checked in one pass, so a catalog of
        thousands of services costs one build, not one per service."""
        services: dict[ServiceKey, ServiceRoute] = {}
        owners: dict[str, ServiceKey] = {}
        prefixes: dict[str, ServiceKey] = {}
        for route in routes:
            current = self.services.get(route.key)
            if current is not None:
                route = replace(route, mode=current.mode, endpoints=current.endpoints)
            for host in route.hosts:
                owner = owners.setdefault(host, route.key)
                if owner != route.key:
                    raise ClaimConflict(f"{owner} and {route.key} both claim host(s) {host}")
            if route.path_prefix is not None:
                owner = prefixes.setdefault(route.path_prefix, route.key)
                if owner != route.key:
                    raise ClaimConflict(f"{owner} and {route.key} both claim path prefix {route.path_prefix}")
            services[route.key] = route
        if services == dict(self.services):
            return self
        return replace(self, services=services)

    def with_modes(self, modes: Mapping[ServiceKey, Mode]) -> RoutingState:
        """The state with each known service of `modes` set to its mode (unknown services are ignored: the
        catalog, not a decision, decides what is routed)."""
        changed = {
            key: replace(route, mode=parse_mode(modes[key]))
            for key, route in self.services.items()
            if key in modes and modes[key] != route.mode
        }
        if not changed:
            return self
        return replace(self, services={**self.services, **changed})

    def without_service(self, key: ServiceKey) -> RoutingState:
        if key not in self.services:
            return self
        return replace(self, services={k: v for k, v in self.services.items() if k != key})

    def with_activator(self, endpoints: Iterable[Endpoint]) -> RoutingState:
        activator = tuple(sorted(set(endpoints)))
        return self if activator == self.activator else replace(self, activator=activator)
