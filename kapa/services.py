"""What every part knows about a service: its key, its annotations, its hosts and its endpoints.

The scaler, the activator, the gateway and the local backend all speak of services and pods with these
types, whichever source (a YAML file, Kubernetes) they come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, order=True)
class ServiceKey:
    """A service's identity: Kubernetes namespace and name (a Deployment and its Service share it)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ServiceKey:
        """Parse `NAMESPACE/NAME`; a bare `NAME` means the `default` namespace."""
        namespace, sep, name = text.partition("/")
        if not sep:
            namespace, name = "default", namespace
        if not namespace or not name or "/" in name:
            raise ValueError(f"expected NAMESPACE/NAME, got {text!r}")
        return cls(namespace, name)

    def hosts(self) -> tuple[str, ...]:
        """Host header values that route to this service, as cluster DNS spells them."""
        base = f"{self.name}.{self.namespace}"
        return (base, f"{base}.svc", f"{base}.svc.cluster.local")


@dataclass(frozen=True)
class ServiceSpec:
    """A service enrolled with Kapa: its key and the annotations that configure its scaling."""

    key: ServiceKey
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", MappingProxyType(dict(self.annotations)))


@dataclass(frozen=True, order=True)
class Endpoint:
    """One pod of a service, addressed at its queue-proxy's serving port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"
