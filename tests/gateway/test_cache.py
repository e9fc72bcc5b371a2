"""The snapshot cache's versions and one stream's nonce/ACK/NACK/subscription bookkeeping, without gRPC."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from gateway.cache import RequestKind, SnapshotCache, StreamBook
from gateway.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, ROUTES_FIRST_ORDER


def clusters(*names: str) -> dict[str, cluster_pb2.Cluster]:
    return {name: cluster_pb2.Cluster(name=name) for name in names}


def assignments(*names: str) -> dict[str, endpoint_pb2.ClusterLoadAssignment]:
    return {name: endpoint_pb2.ClusterLoadAssignment(cluster_name=name) for name in names}


def test_versions_change_per_type_only_when_content_changes() -> None:
    cache = SnapshotCache()
    assert cache.set_resources({CLUSTER_TYPE: clusters("a"), ENDPOINT_TYPE: assignments("a")}) == [
        CLUSTER_TYPE, ENDPOINT_TYPE,
    ]
    first = {type_url: snap.version for type_url, snap in cache.snapshot().items()}
    # Same content (rebuilt objects): no new version, nothing pushed.
    assert cache.set_resources({CLUSTER_TYPE: clusters("a"), ENDPOINT_TYPE: assignments("a")}) == []
    assert {type_url: snap.version for type_url, snap in cache.snapshot().items()} == first
    # Only endpoints change: only their version moves.
    assert cache.set_resources({CLUSTER_TYPE: clusters("a"), ENDPOINT_TYPE: assignments("a", "b")}) == [ENDPOINT_TYPE]
    snapshot = cache.snapshot()
    assert snapshot[CLUSTER_TYPE].version == first[CLUSTER_TYPE]
    assert snapshot[ENDPOINT_TYPE].version != first[ENDPOINT_TYPE]
    assert sorted(snapshot[ENDPOINT_TYPE].resources) == ["a", "b"]


def test_watchers_are_woken_by_changes_only() -> None:
    cache = SnapshotCache()
    event = asyncio.Event()
    cache.watch(event)
    cache.set_resources({CLUSTER_TYPE: clusters("a")})
    assert event.is_set()
    event.clear()
    cache.set_resources({CLUSTER_TYPE: clusters("a")})
    assert not event.is_set()
    cache.unwatch(event)
    cache.set_resources({CLUSTER_TYPE: clusters("b")})
    assert not event.is_set()


def new_stream(cache: SnapshotCache, type_url: str, names: tuple[str, ...] = ()) -> tuple[StreamBook, str]:
    """A stream that asked for `type_url` and got its first response; returns the book and that nonce."""
    book = StreamBook()
    assert book.on_request(type_url, "", "", names, None).kind is RequestKind.INITIAL
    (response,) = book.due_responses(cache.snapshot())
    return book, response.nonce


def test_initial_request_gets_current_version_then_nothing_until_a_change() -> None:
    cache = SnapshotCache()
    cache.set_resources({CLUSTER_TYPE: clusters("a", "b")})
    book = StreamBook()
    assert book.due_responses(cache.snapshot()) == []  # nothing asked yet: nothing sent
    book.on_request(CLUSTER_TYPE, "", "", [], None)
    (response,) = book.due_responses(cache.snapshot())
    assert response.version == cache.snapshot()[CLUSTER_TYPE].version
    assert len(response.resources) == 2  # wildcard: all clusters
    outcome = book.on_request(CLUSTER_TYPE, response.version, response.nonce, [], None)
    assert (outcome.kind, outcome.version) == (RequestKind.ACK, response.version)
    assert book.due_responses(cache.snapshot()) == []
    cache.set_resources({CLUSTER_TYPE: clusters("a")})
    (update,) = book.due_responses(cache.snapshot())
    assert update.version != response.version and update.nonce != response.nonce
    assert len(update.resources) == 1


@pytest.mark.parametrize(
    ("type_url", "names", "expected"),
    [
        (CLUSTER_TYPE, (), ["a", "b", "c"]),  # legacy wildcard
        (CLUSTER_TYPE, ("*",), ["a", "b", "c"]),  # explicit wildcard
        (LISTENER_TYPE, (), ["a", "b", "c"]),
        (ENDPOINT_TYPE, ("a", "c", "zz"), ["a", "c"]),  # by name; unknown names are simply absent
        (ENDPOINT_TYPE, (), []),  # never wildcard: no names, no resources
        (ROUTE_TYPE, ("b",), ["b"]),
    ],
)
def test_subscriptions_select_resources(type_url: str, names: tuple[str, ...], expected: list[str]) -> None:
    cache = SnapshotCache()
    cache.set_resources({type_url: clusters("a", "b", "c")})
    book = StreamBook()
    book.on_request(type_url, "", "", names, None)
    (response,) = book.due_responses(cache.snapshot())
    assert sorted(cluster_pb2.Cluster.FromString(item.value).name for item in response.resources) == expected


def test_subscription_change_is_answered_at_the_same_version() -> None:
    cache = SnapshotCache()
    cache.set_resources({ENDPOINT_TYPE: assignments("a", "b")})
    book, nonce = new_stream(cache, ENDPOINT_TYPE, ("a",))
    version = cache.snapshot()[ENDPOINT_TYPE].version
    # Envoy ACKs and at once adds "b" (a new EDS cluster): same version, new set.
    assert book.on_request(ENDPOINT_TYPE, version, nonce, ["a", "b"], None).kind is RequestKind.ACK
    (response,) = book.due_responses(cache.snapshot())
    assert response.version == version and len(response.resources) == 2


def test_stale_nonce_is_ignored() -> None:
    cache = SnapshotCache()
    cache.set_resources({ENDPOINT_TYPE: assignments("a")})
    book, first_nonce = new_stream(cache, ENDPOINT_TYPE, ("a",))
    cache.set_resources({ENDPOINT_TYPE: assignments("a", "b")})
    (second,) = book.due_responses(cache.snapshot())
    # Envoy's ACK of the first response, sent before it saw the second, with a different subscription.
    outcome = book.on_request(ENDPOINT_TYPE, "1", first_nonce, ["a", "b"], None)
    assert outcome.kind is RequestKind.STALE
    assert book.types[ENDPOINT_TYPE].names == frozenset({"a"})  # the stale request changed nothing
    assert book.due_responses(cache.snapshot()) == []
    assert book.on_request(ENDPOINT_TYPE, second.version, second.nonce, ["a"], None).kind is RequestKind.ACK


def test_nack_keeps_last_good_and_is_not_resent_until_a_new_version() -> None:
    cache = SnapshotCache()
    cache.set_resources({ROUTE_TYPE: clusters("routes")})
    book, nonce = new_stream(cache, ROUTE_TYPE, ("routes",))
    good = cache.snapshot()[ROUTE_TYPE].version
    book.on_request(ROUTE_TYPE, good, nonce, ["routes"], None)
    cache.set_resources({ROUTE_TYPE: {"routes": cluster_pb2.Cluster(name="bad")}})
    (bad,) = book.due_responses(cache.snapshot())
    outcome = book.on_request(ROUTE_TYPE, good, bad.nonce, ["routes"], "duplicate domain")
    assert outcome.kind is RequestKind.NACK
    assert (outcome.version, outcome.in_force, outcome.detail) == (bad.version, good, "duplicate domain")
    type_book = book.types[ROUTE_TYPE]
    assert (type_book.acked_version, type_book.rejected_version) == (good, bad.version)
    assert book.due_responses(cache.snapshot()) == []  # the rejected version is not sent again
    cache.set_resources({ROUTE_TYPE: clusters("routes")})
    (fixed,) = book.due_responses(cache.snapshot())
    assert fixed.version not in {good, bad.version}
    assert book.on_request(ROUTE_TYPE, fixed.version, fixed.nonce, ["routes"], None).kind is RequestKind.ACK
    assert book.types[ROUTE_TYPE].acked_version == fixed.version


def test_responses_send_clusters_before_endpoints_before_listener_before_routes() -> None:
    cache = SnapshotCache()
    cache.set_resources(
        {t: clusters("x") for t in (ROUTE_TYPE, LISTENER_TYPE, ENDPOINT_TYPE, CLUSTER_TYPE)}
    )
    book = StreamBook()
    for type_url in (ROUTE_TYPE, LISTENER_TYPE, ENDPOINT_TYPE, CLUSTER_TYPE):
        book.on_request(type_url, "", "", ["x"] if type_url in (ROUTE_TYPE, ENDPOINT_TYPE) else [], None)
    assert [r.type_url for r in book.due_responses(cache.snapshot())] == [
        CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE,
    ]
    # A change published routes-first is sent routes-first.
    changed = cache.set_resources(
        {ROUTE_TYPE: clusters("x", "y"), ENDPOINT_TYPE: clusters("x", "z")}, order=ROUTES_FIRST_ORDER
    )
    assert (changed, cache.order) == ([ROUTE_TYPE, ENDPOINT_TYPE], ROUTES_FIRST_ORDER)
    assert [r.type_url for r in book.due_responses(cache.snapshot(), cache.order)] == [ROUTE_TYPE, ENDPOINT_TYPE]


def test_nonces_are_unique_within_a_stream() -> None:
    cache = SnapshotCache()
    book = StreamBook()
    for type_url in (CLUSTER_TYPE, LISTENER_TYPE):
        book.on_request(type_url, "", "", [], None)
    nonces = []
    for round_ in range(3):
        cache.set_resources({CLUSTER_TYPE: clusters(f"c{round_}"), LISTENER_TYPE: clusters(f"l{round_}")})
        nonces += [response.nonce for response in book.due_responses(cache.snapshot())]
    assert len(nonces) == len(set(nonces)) == 6


def test_a_request_without_nonce_resends_even_an_unchanged_version() -> None:
    cache = SnapshotCache()
    cache.set_resources({CLUSTER_TYPE: clusters("a")})
    book, nonce = new_stream(cache, CLUSTER_TYPE)
    book.on_request(CLUSTER_TYPE, cache.snapshot()[CLUSTER_TYPE].version, nonce, [], None)
    assert book.due_responses(cache.snapshot()) == []
    assert book.on_request(CLUSTER_TYPE, "", "", [], None).kind is RequestKind.INITIAL
    assert len(book.due_responses(cache.snapshot())) == 1
