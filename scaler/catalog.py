"""Which services the scaler decides for: a protocol, a services file, and a fixed in-memory list.

The loop asks `services()` every tick, so a catalog only has to keep its answer current: the file catalog
re-reads its file when it changes, the Kubernetes one (kapa.kube.deployments.DeploymentCatalog) keeps a watch's
view of the enrolled Deployments.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from kapa.core.log import get_logger
from kapa.core.services import ServiceKey, ServicesFileError, ServiceSpec, load_services

log = get_logger(__name__)


class ServiceCatalog(Protocol):
    """The services enrolled with Kapa, as of now. Called every tick: must be cheap."""

    def services(self) -> Mapping[ServiceKey, ServiceSpec]: ...


@runtime_checkable
class ReplicaRecord(Protocol):
    """A catalog that also knows the replica count each service's workload is set to (Kubernetes: the
    Deployment's spec.replicas); None when it does not know. The loop asks once per service, at its first
    decision: a workload set to zero was scaled to zero before and stays there (observations.existed_before)."""

    def replicas(self, key: ServiceKey) -> int | None: ...


class StaticCatalog:
    """A catalog the embedding program sets (the local mode knows its services; tests and benchmarks)."""

    def __init__(self, specs: Iterable[ServiceSpec] = ()) -> None:
        self.replace(specs)

    def replace(self, specs: Iterable[ServiceSpec]) -> None:
        self._services = {spec.key: spec for spec in specs}

    def services(self) -> Mapping[ServiceKey, ServiceSpec]:
        return self._services


class FileCatalog:
    """Services from a services file (kapa.core.services format), re-read whenever its mtime or size changes.

    A file that becomes unreadable or malformed is logged (once per change) and the last good list is kept:
    a typo while editing must not make every service vanish and scale to zero.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._services: dict[ServiceKey, ServiceSpec] = {}
        self._reload_if_changed(raise_errors=True)

    def _reload_if_changed(self, raise_errors: bool = False) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as error:
            if raise_errors:
                raise ServicesFileError(f"{self.path}: {error.strerror}") from error
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            entries = load_services(self.path)
        except ServicesFileError as error:
            if raise_errors:
                raise
            log.error("services file unusable; keeping the previous services", error=str(error))
            return
        self._services = {entry.spec.key: entry.spec for entry in entries}
        log.info("services loaded", path=str(self.path), services=len(self._services))

    def services(self) -> Mapping[ServiceKey, ServiceSpec]:
        self._reload_if_changed()
        return self._services
