"""The xDS snapshot cache and per-stream bookkeeping (state-of-the-world protocol), free of gRPC.

`SnapshotCache` holds the current resources of each type with a version per type: a version changes only
when that type's content changes, so a mode switch sends Envoy a new route table and nothing else. Each
resource also keeps the version at which it last changed, which delta xDS (gateway.delta) sends per resource.

`StreamBook` is one ADS stream's memory, per type: what Envoy subscribed to, what we last sent (version,
names, nonce), what it last ACKed, and what it rejected. It decides which requests to ignore and which
responses are due, following the xDS protocol:

- A request whose `response_nonce` is not the nonce of our latest response of that type is stale: Envoy
  sent it before seeing our latest response, and will answer that one too. It is ignored.
- A request carrying `error_detail` is a NACK of the response with that nonce: Envoy keeps its previous
  config. The rejected version is not sent again; the next change of that type supersedes it.
- Otherwise it is an ACK, possibly with a changed subscription (`resource_names`), which is answered
  even when the version did not change, because SotW responses carry exactly the subscribed set.
- Listener and Cluster subscriptions with no names (or "*") are wildcard: every resource of the type.
  Routes and endpoints are always asked for by name; an empty list there means "none".
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from google.protobuf import any_pb2
from google.protobuf.message import Message

from gateway.resources import CLUSTER_TYPE, LISTENER_TYPE, TYPE_ORDER

WILDCARD_TYPES: Final = frozenset({LISTENER_TYPE, CLUSTER_TYPE})


@dataclass(frozen=True)
class TypeSnapshot:
    """All resources of one type at one version, packed as Envoy receives them."""

    version: str
    resources: Mapping[str, any_pb2.Any]
    #: Per resource: the type version at which its content last changed (delta xDS sends only resources
    #: whose version the client does not have; Envoy's config_dump shows this version per resource).
    resource_versions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resources", MappingProxyType(dict(self.resources)))
        versions = {name: self.resource_versions.get(name, self.version) for name in self.resources}
        object.__setattr__(self, "resource_versions", MappingProxyType(versions))


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


#: How many versions' publication times are kept: enough for every ACK still in flight.
PUBLISHED_KEPT = 256


class SnapshotCache:
    """The current resources per type, each type versioned on its own; wakes watchers on every change."""

    def __init__(self) -> None:
        self._types: dict[str, TypeSnapshot] = {}
        self._serial = 0
        self._watchers: set[asyncio.Event] = set()
        self._order: tuple[str, ...] = TYPE_ORDER
        #: (type, name) -> (message object, its packing); see `_packed`.
        self._pack_memo: dict[tuple[str, str], tuple[Message, any_pb2.Any]] = {}
        #: version -> when it was published (time.monotonic()), for the latest PUBLISHED_KEPT versions.
        self._published: dict[str, float] = {}

    @property
    def order(self) -> tuple[str, ...]:
        """The order in which the latest change's types are to be sent (see resources.TYPE_ORDER)."""
        return self._order

    def snapshot(self) -> Mapping[str, TypeSnapshot]:
        return MappingProxyType(dict(self._types))

    def published_at(self, version: str) -> float | None:
        """When `version` was published (time.monotonic()); None for a version too old or never ours."""
        return self._published.get(version)

    def set_resources(
        self, resources: Mapping[str, Mapping[str, Message]], order: tuple[str, ...] = TYPE_ORDER
    ) -> list[str]:
        """Replace the resources of the given types; returns the types whose content (hence version) changed.

        `order` is the order in which streams send the changed types, make before break. The messages must
        not be changed afterwards (the cache may reuse their packing when handed the same object again).

        Versions are one counter shared by all types, so a version string never repeats across types and a
        log line "version 7" is unambiguous.
        """
        changed: list[str] = []
        for type_url, messages in resources.items():
            packed = {name: self._packed(type_url, name, message) for name, message in messages.items()}
            self._pack_memo = {
                memo_key: memo for memo_key, memo in self._pack_memo.items()
                if memo_key[0] != type_url or memo_key[1] in messages
            }
            current = self._types.get(type_url)
            if current is not None and dict(current.resources) == packed:
                continue
            self._serial += 1
            unchanged = {
                name: current.resource_versions[name]
                for name, resource in packed.items()
                if current is not None and current.resources.get(name) == resource
            }
            self._types[type_url] = TypeSnapshot(str(self._serial), packed, unchanged)
            self._published[str(self._serial)] = time.monotonic()
            changed.append(type_url)
        while len(self._published) > PUBLISHED_KEPT:
            del self._published[next(iter(self._published))]
        if changed:
            self._order = order
            for event in self._watchers:
                event.set()
        return changed

    def _packed(self, type_url: str, name: str, message: Message) -> any_pb2.Any:
        """`message` packed, reusing the last packing when handed the very same (shared, unchanged) object."""
        memo = self._pack_memo.get((type_url, name))
        if memo is not None and memo[0] is message:
            return memo[1]
        packed = _pack(message)
        self._pack_memo[(type_url, name)] = (message, packed)
        return packed

    def watch(self, event: asyncio.Event) -> None:
        """Set `event` whenever resources change (until `unwatch`)."""
        self._watchers.add(event)

    def unwatch(self, event: asyncio.Event) -> None:
        self._watchers.discard(event)


class RequestKind(enum.Enum):
    INITIAL = "initial"
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"
    #: Delta xDS only: a subscription change that answers no response.
    SUBSCRIBE = "subscribe"


@dataclass(frozen=True)
class RequestOutcome:
    """What a DiscoveryRequest meant; `version` is the version it ACKed or rejected."""

    kind: RequestKind
    type_url: str
    version: str | None = None
    #: For a NACK: Envoy's reason, verbatim.
    detail: str = ""
    #: For a NACK: the version Envoy still runs (SotW: its request's version_info; delta: its last ACK).
    in_force: str = ""


@dataclass(frozen=True)
class Response:
    """A DiscoveryResponse to send, before it becomes a proto."""

    type_url: str
    version: str
    nonce: str
    resources: tuple[any_pb2.Any, ...]


@dataclass
class TypeBook:
    """One stream's bookkeeping for one resource type."""

    #: Subscribed names; empty with `wildcard` set means all.
    names: frozenset[str] = frozenset()
    wildcard: bool = False
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    sent_wildcard: bool = False
    nonce: str | None = None
    acked_version: str | None = None
    rejected_version: str | None = None
    reject_reason: str = ""


@dataclass
class StreamBook:
    """The protocol state of one ADS stream (see the module docstring for the rules)."""

    types: dict[str, TypeBook] = field(default_factory=dict)
    _nonces: int = 0

    def on_request(
        self, type_url: str, version_info: str, response_nonce: str, resource_names: Iterable[str], error: str | None
    ) -> RequestOutcome:
        book = self.types.get(type_url)
        if book is not None and response_nonce and response_nonce != book.nonce:
            return RequestOutcome(RequestKind.STALE, type_url, version_info)
        if book is None:
            book = self.types[type_url] = TypeBook()
        names = frozenset(resource_names)
        book.wildcard = type_url in WILDCARD_TYPES and (not names or "*" in names)
        book.names = frozenset() if book.wildcard else names
        if not response_nonce:
            # Nothing of ours seen on this stream for this type (first request, or Envoy re-subscribing):
            # it wants a response whatever it had before.
            book.sent_version = None
            return RequestOutcome(RequestKind.INITIAL, type_url, version_info or None)
        if error is not None:
            book.rejected_version, book.reject_reason = book.sent_version, error
            return RequestOutcome(RequestKind.NACK, type_url, book.sent_version, error, version_info)
        book.acked_version = version_info
        return RequestOutcome(RequestKind.ACK, type_url, version_info)

    def due_responses(self, snapshot: Mapping[str, TypeSnapshot], order: tuple[str, ...] = TYPE_ORDER) -> list[Response]:
        """The responses to send now, in `order` (Envoy applies them in the order it receives them)."""
        responses = []
        ordered = [t for t in order if t in self.types] + [t for t in self.types if t not in order]
        for type_url in ordered:
            book = self.types[type_url]
            current = snapshot.get(type_url)
            version = current.version if current is not None else ""
            if (
                book.sent_version == version
                and book.sent_names == book.names
                and book.sent_wildcard == book.wildcard
            ):
                continue
            available = current.resources if current is not None else {}
            chosen = sorted(available) if book.wildcard else sorted(book.names & available.keys())
            self._nonces += 1
            nonce = str(self._nonces)
            book.sent_version, book.sent_names, book.sent_wildcard, book.nonce = (
                version, book.names, book.wildcard, nonce,
            )
            responses.append(Response(type_url, version, nonce, tuple(available[name] for name in chosen)))
        return responses
