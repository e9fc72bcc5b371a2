"""What the activator needs to know about each service, parsed once into typed values.

The services file is the one `kapa scaler` and `kapa up` read (kapa.services.load_services); from it the
activator takes each service's hosts, path prefix and the two annotations that govern holding requests:
containerConcurrency (kapa.dev/container-concurrency) and the request timeout (kapa.dev/timeout-seconds).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kapa import contract
from kapa.log import get_logger
from kapa.services import ServiceEntry, ServiceKey

log = get_logger(__name__)

#: Knative's activator breaker depth per revision: requests held beyond this get 503.
DEFAULT_QUEUE_LIMIT = 10_000
#: Knative caps timeoutSeconds at 600.
MAX_TIMEOUT_S = 600.0


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


def _annotation_number(
    annotations: Mapping[str, str], key: str, default: float, low: float, high: float, service: ServiceKey
) -> float:
    """The annotation's value if it is a number in [low, high]; otherwise a log line naming it, and the default."""
    raw = annotations.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        log.warning("bad annotation, using default", service=str(service), key=key, value=raw, default=default)
        return default
    return value


def settings_from_entry(entry: ServiceEntry, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> ServiceSettings:
    """Typed settings of one services-file entry; a malformed annotation costs only that key."""
    key, annotations = entry.spec.key, entry.spec.annotations
    concurrency = _annotation_number(
        annotations, contract.ANNOTATION_CONTAINER_CONCURRENCY, contract.DEFAULT_CONTAINER_CONCURRENCY, 0, 1000, key
    )
    if concurrency != int(concurrency):
        log.warning("bad annotation, using default", service=str(key),
                    key=contract.ANNOTATION_CONTAINER_CONCURRENCY, value=concurrency)
        concurrency = contract.DEFAULT_CONTAINER_CONCURRENCY
    timeout_s = _annotation_number(
        annotations, contract.ANNOTATION_TIMEOUT_SECONDS, contract.DEFAULT_REVISION_TIMEOUT_SECONDS, 0.001,
        MAX_TIMEOUT_S, key,
    )
    return ServiceSettings(
        key=key,
        hosts=entry.hosts,
        path_prefix=entry.path_prefix,
        container_concurrency=int(concurrency),
        timeout_s=timeout_s,
        queue_limit=queue_limit,
    )


def settings_from_entries(entries: Iterable[ServiceEntry], queue_limit: int = DEFAULT_QUEUE_LIMIT) -> list[ServiceSettings]:
    return [settings_from_entry(entry, queue_limit) for entry in entries]
