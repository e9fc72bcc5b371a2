"""Per-stream bookkeeping for incremental (delta) xDS, free of gRPC.

With state-of-the-world, every change of a type resends every subscribed resource of it: one pod of one
service coming up sends Envoy the endpoints of all services. Delta xDS sends only the resources whose
version the client does not have, and names removed ones; with many services and constant autoscaling
churn that is the difference between O(services) and O(1) per change.

The rules (xDS protocol, incremental variant):

- Subscriptions arrive as differences (`resource_names_subscribe` / `_unsubscribe`) and are applied from
  every request, whatever its nonce, since dropping one would lose it for good. Listener and Cluster
  start as wildcard when the first request names nothing; "*" subscribes to or leaves the wildcard.
- On a new stream, `initial_resource_versions` says what the client already has (after a reconnect), so
  unchanged resources are not sent again.
- A request with a `response_nonce` ACKs (or, with `error_detail`, NACKs) that response. A NACKed
  resource version counts as sent: it is not sent again, and the next change of the resource supersedes it.
- The first response of a type is sent even when empty, so that Envoy's initialisation never waits on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import any_pb2

from gateway.cache import WILDCARD_TYPES, RequestKind, RequestOutcome, TypeSnapshot
from gateway.resources import TYPE_ORDER


@dataclass(frozen=True)
class DeltaResponse:
    """A DeltaDiscoveryResponse to send, before it becomes a proto."""

    type_url: str
    #: The cache's version of the whole type, for logs and status (Envoy does not interpret it).
    version: str
    nonce: str
    #: (name, version, resource) of each resource added or changed.
    resources: tuple[tuple[str, str, any_pb2.Any], ...]
    removed: tuple[str, ...]


@dataclass
class DeltaTypeBook:
    """One delta stream's bookkeeping for one resource type."""

    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    #: name -> the version the client has: what we sent it (accepted or not), or what it reported.
    known: dict[str, str] = field(default_factory=dict)
    responded: bool = False
    #: nonce -> type version of responses not yet ACKed or NACKed.
    pending: dict[str, str] = field(default_factory=dict)
    acked_version: str | None = None
    rejected_version: str | None = None
    reject_reason: str = ""


@dataclass
class DeltaStreamBook:
    """The protocol state of one delta ADS stream (see the module docstring for the rules)."""

    types: dict[str, DeltaTypeBook] = field(default_factory=dict)
    _nonces: int = 0

    def on_request(
        self,
        type_url: str,
        subscribe: Iterable[str],
        unsubscribe: Iterable[str],
        initial_versions: Mapping[str, str],
        response_nonce: str,
        error: str | None,
    ) -> RequestOutcome:
        book = self.types.get(type_url)
        first = book is None
        if book is None:
            book = self.types[type_url] = DeltaTypeBook(known=dict(initial_versions))
        subscribe, unsubscribe = set(subscribe), set(unsubscribe)
        if first and type_url in WILDCARD_TYPES and not subscribe:
            book.wildcard = True
        if "*" in subscribe:
            book.wildcard = True
        if "*" in unsubscribe:
            book.wildcard = False
        book.names |= subscribe - {"*"}
        book.names -= unsubscribe
        for name in unsubscribe:
            book.known.pop(name, None)  # subscribing again later must send it again
        if first:
            return RequestOutcome(RequestKind.INITIAL, type_url)
        if not response_nonce:
            return RequestOutcome(RequestKind.SUBSCRIBE, type_url)
        version = book.pending.pop(response_nonce, None)
        if version is None:
            return RequestOutcome(RequestKind.STALE, type_url)
        if error is not None:
            book.rejected_version, book.reject_reason = version, error
            return RequestOutcome(RequestKind.NACK, type_url, version, error, book.acked_version or "")
        book.acked_version = version
        return RequestOutcome(RequestKind.ACK, type_url, version)

    def due_responses(
        self, snapshot: Mapping[str, TypeSnapshot], order: tuple[str, ...] = TYPE_ORDER
    ) -> list[DeltaResponse]:
        """The responses to send now, in `order`: per type, what changed or vanished since the client's view."""
        responses = []
        for type_url in [t for t in order if t in self.types] + [t for t in self.types if t not in order]:
            book = self.types[type_url]
            current = snapshot.get(type_url) or TypeSnapshot("", {})
            in_scope = (set(current.resources) | book.names) if book.wildcard else book.names
            updated = sorted(
                name for name in in_scope
                if name in current.resources and book.known.get(name) != current.resource_versions[name]
            )
            removed = sorted(name for name in book.known if name not in current.resources)
            if book.responded and not updated and not removed:
                continue
            self._nonces += 1
            nonce = str(self._nonces)
            for name in updated:
                book.known[name] = current.resource_versions[name]
            for name in removed:
                del book.known[name]
            book.responded = True
            book.pending[nonce] = current.version
            responses.append(
                DeltaResponse(
                    type_url,
                    current.version,
                    nonce,
                    tuple((name, current.resource_versions[name], current.resources[name]) for name in updated),
                    tuple(removed),
                )
            )
        return responses
