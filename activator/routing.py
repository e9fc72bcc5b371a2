"""Which service a request is for: by path prefix where one is configured, else by Host header.

A path prefix wins over the Host (a local setup often sends everything to 127.0.0.1:PORT and tells
services apart by path); the longest matching prefix wins, and the path is forwarded unchanged. The Host is matched without its port and
case-insensitively, as HTTP defines it.
"""

from __future__ import annotations

from collections.abc import Iterable

from kapa.core.services import ServiceKey

from activator.config import ServiceSettings


class RoutingError(ValueError):
    """Two services claim the same Host or path prefix."""


class Router:
    def __init__(self, services: Iterable[ServiceSettings] = ()) -> None:
        self._by_host: dict[bytes, ServiceKey] = {}
        self._prefixes: list[tuple[bytes, ServiceKey]] = []
        self.update(services)

    def update(self, services: Iterable[ServiceSettings]) -> None:
        """Route exactly `services` from now on; on a conflict raise RoutingError and keep routing as before."""
        by_host: dict[bytes, ServiceKey] = {}
        prefixes: dict[bytes, ServiceKey] = {}
        for service in services:
            for host in service.hosts:
                self._claim(by_host, host.lower().encode(), service.key, "host")
            if service.path_prefix:
                self._claim(prefixes, service.path_prefix.encode(), service.key, "path prefix")
        self._by_host = by_host
        #: Longest first, so /api/v2 wins over /api.
        self._prefixes = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)

    @staticmethod
    def _claim(table: dict[bytes, ServiceKey], value: bytes, key: ServiceKey, what: str) -> None:
        owner = table.setdefault(value, key)
        if owner != key:
            raise RoutingError(f"{what} {value.decode()!r} is claimed by both {owner} and {key}")

    def route(self, host: bytes | None, path: bytes) -> ServiceKey | None:
        """The service for a request, or None when neither its path nor its Host is known."""
        for prefix, key in self._prefixes:
            if path.startswith(prefix) and (
                prefix.endswith(b"/") or len(path) == len(prefix) or path[len(prefix)] in b"/?"
            ):
                return key
        if host:
            return self._by_host.get(_without_port(host.lower()))
        return None


def _without_port(host: bytes) -> bytes:
    if host.startswith(b"["):  # an IPv6 literal keeps its colons: drop only what follows the bracket
        return host[: host.find(b"]") + 1]
    return host.split(b":", 1)[0]
