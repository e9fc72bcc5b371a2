"""What the activator needs to know about each service, parsed once into typed values.

The services file is the one `kapa scaler` and `kapa up` read (kapa.core.services.load_services); from it the
activator takes each service's hosts and path prefix, and, through the scaler's own annotation parsing
(kapa.core.settings.service_config, so both parts read an annotation the same way), the two settings that
govern holding requests: containerConcurrency (kapa.dev/container-concurrency) and the request timeout
(kapa.dev/timeout-seconds). A malformed annotation costs only its key: a log line naming it and the
service, and the default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.core.services import ServiceEntry, ServiceKey
from kapa.core.settings import AutoscalerConfig, service_config

log = get_logger(__name__)

#: Knative's activator breaker depth per revision: requests held beyond this get 503.
DEFAULT_QUEUE_LIMIT = 10_000


@dataclass(frozen=True)
class ServiceSettings:
    """One service as the activator serves it."""

    key: ServiceKey
    hosts: tuple[str, ...]
    path_prefix: str | None = None
    #: At most this many requests in flight to one pod; 0 means no limit (Knative's containerConcurrency).
    container_concurrency: int = contract.DEFAULT_CONTAINER_CONCURRENCY
    #: A request held longer than this gets 504 (Knative's revision timeoutSeconds).
    timeout_s: float = float(contract.DEFAULT_REVISION_TIMEOUT_SECONDS)
    queue_limit: int = DEFAULT_QUEUE_LIMIT


def settings_from_entry(entry: ServiceEntry, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> ServiceSettings:
    """Typed settings of one services-file entry."""
    config, errors = service_config(AutoscalerConfig.default(), entry.spec)
    for error in errors:
        log.warning("bad annotation, using the default", service=error.service, key=error.key, problem=error.message)
    return ServiceSettings(
        key=entry.spec.key,
        hosts=entry.hosts,
        path_prefix=entry.path_prefix,
        container_concurrency=config.container_concurrency,
        timeout_s=config.timeout_s,
        queue_limit=queue_limit,
    )


def settings_from_entries(entries: Iterable[ServiceEntry], queue_limit: int = DEFAULT_QUEUE_LIMIT) -> list[ServiceSettings]:
    return [settings_from_entry(entry, queue_limit) for entry in entries]


class CatalogSettings:
    """Settings for a catalog that changes while the activator runs (Kubernetes): each entry is parsed once
    per change of the entry, so a bad annotation is logged when it appears, not at every catalog change."""

    def __init__(self, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self._queue_limit = queue_limit
        self._parsed: dict[ServiceKey, tuple[ServiceEntry, ServiceSettings]] = {}

    def __call__(self, entries: Iterable[ServiceEntry]) -> list[ServiceSettings]:
        parsed = {}
        for entry in entries:
            known = self._parsed.get(entry.spec.key)
            parsed[entry.spec.key] = known if known and known[0] == entry else (entry, settings_from_entry(entry, self._queue_limit))
        self._parsed = parsed
        return [settings for _, settings in parsed.values()]
