"""What every part knows about a service: its key, its annotations, its hosts and its endpoints.

The scaler, the activator, the gateway and the local backend all speak of services and pods with these
types, whichever source (a YAML file, Kubernetes) they come from.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

#: Kubernetes' default cluster DNS domain (the kubelet's --cluster-domain).
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

#: A Host Envoy accepts as a virtual-host domain: a name or address, with at most a leading "*" (suffix
#: match, e.g. "*.example.com") or a trailing "*" (prefix match, e.g. "hello.*").
_HOST = re.compile(r"\*?[a-z0-9_.:\[\]-]+|[a-z0-9_.:\[\]-]+\*")


def parse_host(text: str) -> str:
    """A Host value as every part matches it: trimmed and lower-cased (HTTP compares hosts case-insensitively).
    Raises ValueError naming the value when Envoy could not take it as a virtual-host domain."""
    host = text.strip().lower()
    if not _HOST.fullmatch(host):
        raise ValueError(f"invalid host {text.strip()!r}")
    return host


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

    def hosts(self, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> tuple[str, ...]:
        """Host header values that route to this service, as cluster DNS spells them."""
        base = f"{self.name}.{self.namespace}"
        return (base, f"{base}.svc", f"{base}.svc.{cluster_domain}")


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


@dataclass(frozen=True)
class ServiceEntry:
    """One service of a services file: what the scaler, activator and gateway need, plus local-mode fields."""

    spec: ServiceSpec
    #: Host header values beyond ServiceKey.hosts() that route to the service.
    extra_hosts: tuple[str, ...] = ()
    #: Requests whose path starts with this prefix route to the service whatever their Host.
    path_prefix: str | None = None
    #: The `local:` section, read only by the local mode (command to run the app, its port, ...).
    local: Mapping[str, object] = field(default_factory=dict)
    #: The cluster DNS domain of the service's fully qualified host.
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.spec.key.hosts(self.cluster_domain) + self.extra_hosts


class ServicesFileError(ValueError):
    """A services file that cannot be used; the message names the file and the entry."""


_FILE_KEYS = ("services",)
_ENTRY_KEYS = ("name", "namespace", "annotations", "hosts", "pathPrefix", "local")


def _refuse_unknown_keys(mapping: Mapping[object, object], known: tuple[str, ...], where: str) -> None:
    """A misspelt key (`anotations:`) would otherwise be silently ignored and its settings never applied."""
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
            raise ServicesFileError(f"{where}: unknown key {key!r}{hint}")


def parse_services(document: object, source: str = "<services>") -> list[ServiceEntry]:
    """Parse the services file format shared by `kapa scaler`, `kapa activator`, `kapa gateway` and `kapa up`:

        services:
          - name: hello                 # required
            namespace: default          # default "default"
            annotations: {autoscaling.knative.dev/target: "10"}
            hosts: [hello.localhost]    # optional extra Host values
            pathPrefix: /hello          # optional
            local: {command: [...], port: 8080}   # local mode only

    Annotation values are validated later, per key, by the scaler (a bad value there costs only that key);
    here only the shape is checked, because a service without a name cannot be served at all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("services"), list):
        raise ServicesFileError(f"{source}: expected a mapping with a 'services' list")
    _refuse_unknown_keys(document, _FILE_KEYS, source)
    entries: list[ServiceEntry] = []
    seen: set[ServiceKey] = set()
    for index, item in enumerate(document["services"]):
        where = f"{source}: services[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ServicesFileError(f"{where}: each service needs a 'name'")
        _refuse_unknown_keys(item, _ENTRY_KEYS, where)
        key = ServiceKey(str(item.get("namespace", "default")), item["name"])
        if key in seen:
            raise ServicesFileError(f"{where}: service {key} is listed twice")
        seen.add(key)
        annotations = item.get("annotations") or {}
        hosts = item.get("hosts") or []
        local = item.get("local") or {}
        if not isinstance(annotations, dict) or not isinstance(hosts, list) or not isinstance(local, dict):
            raise ServicesFileError(f"{where}: 'annotations' and 'local' must be mappings, 'hosts' a list")
        prefix = item.get("pathPrefix")
        if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith("/")):
            raise ServicesFileError(f"{where}: 'pathPrefix' must start with '/'")
        entries.append(
            ServiceEntry(
                spec=ServiceSpec(key, {str(k): str(v) for k, v in annotations.items()}),
                extra_hosts=tuple(str(host) for host in hosts),
                path_prefix=prefix,
                local=local,
            )
        )
    return entries


def load_services(path: str | Path) -> list[ServiceEntry]:
    """Read a services file (see parse_services)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ServicesFileError(f"{path}: {error}") from error
    return parse_services(document, str(path))
