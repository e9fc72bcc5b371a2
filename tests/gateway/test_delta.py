"""Delta xDS bookkeeping of one stream: what is sent, what is not sent again, subscriptions, ACK/NACK."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from gateway.cache import RequestKind, SnapshotCache
from gateway.delta import DeltaResponse, DeltaStreamBook
from gateway.resources import CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE


def named(*names: str, tag: str = "") -> dict[str, cluster_pb2.Cluster]:
    """Resources whose content differs with `tag`, so a new tag is a new version of each."""
    return {name: cluster_pb2.Cluster(name=name, alt_stat_name=tag) for name in names}


def sent(responses: list[DeltaResponse]) -> list[tuple[list[str], list[str]]]:
    return [([name for name, _, _ in r.resources], list(r.removed)) for r in responses]


def ack(book: DeltaStreamBook, response: DeltaResponse, error: str | None = None) -> RequestKind:
    return book.on_request(response.type_url, [], [], {}, response.nonce, error).kind


def test_wildcard_sends_only_what_changed_and_names_what_vanished() -> None:
    cache = SnapshotCache()
    cache.set_resources({CLUSTER_TYPE: named("a", "b", "c")})
    book = DeltaStreamBook()
    assert book.on_request(CLUSTER_TYPE, [], [], {}, "", None).kind is RequestKind.INITIAL
    (first,) = book.due_responses(cache.snapshot())
    assert sent([first]) == [(["a", "b", "c"], [])]
    assert ack(book, first) is RequestKind.ACK
    assert book.due_responses(cache.snapshot()) == []
    cache.set_resources({CLUSTER_TYPE: {**named("a", "c"), **named("b", tag="v2")}})  # b changed, a and c not
    (second,) = book.due_responses(cache.snapshot())
    assert sent([second]) == [(["b"], [])]
    cache.set_resources({CLUSTER_TYPE: {**named("a"), **named("b", tag="v2")}})  # c gone
    assert sent(book.due_responses(cache.snapshot())) == [([], ["c"])]


def test_named_subscriptions_follow_subscribe_and_unsubscribe() -> None:
    cache = SnapshotCache()
    cache.set_resources({ENDPOINT_TYPE: named("a", "b")})
    book = DeltaStreamBook()
    book.on_request(ENDPOINT_TYPE, ["a"], [], {}, "", None)
    assert sent(book.due_responses(cache.snapshot())) == [(["a"], [])]
    # Subscribing to one more sends just that one, whatever the nonce says.
    assert book.on_request(ENDPOINT_TYPE, ["b"], [], {}, "", None).kind is RequestKind.SUBSCRIBE
    assert sent(book.due_responses(cache.snapshot())) == [(["b"], [])]
    book.on_request(ENDPOINT_TYPE, [], ["a"], {}, "", None)
    assert book.due_responses(cache.snapshot()) == []  # unsubscribing needs no answer
    cache.set_resources({ENDPOINT_TYPE: named("a", "b", tag="v2")})
    assert sent(book.due_responses(cache.snapshot())) == [(["b"], [])]  # a is no longer wanted
    book.on_request(ENDPOINT_TYPE, ["a"], [], {}, "", None)
    assert sent(book.due_responses(cache.snapshot())) == [(["a"], [])]  # wanted again: sent again


def test_reconnect_with_initial_versions_skips_what_the_client_has() -> None:
    cache = SnapshotCache()
    cache.set_resources({CLUSTER_TYPE: named("a", "b")})
    versions = dict(cache.snapshot()[CLUSTER_TYPE].resource_versions)
    cache.set_resources({CLUSTER_TYPE: {**named("a"), **named("b", tag="v2")}})
    book = DeltaStreamBook()
    book.on_request(CLUSTER_TYPE, [], [], versions, "", None)
    assert sent(book.due_responses(cache.snapshot())) == [(["b"], [])]


def test_first_response_is_sent_even_when_empty() -> None:
    cache = SnapshotCache()
    book = DeltaStreamBook()
    book.on_request(ROUTE_TYPE, ["routes"], [], {}, "", None)
    assert sent(book.due_responses(cache.snapshot())) == [([], [])]
    assert book.due_responses(cache.snapshot()) == []


def test_nack_is_recorded_and_the_rejected_version_not_resent() -> None:
    cache = SnapshotCache()
    cache.set_resources({ROUTE_TYPE: named("routes")})
    book = DeltaStreamBook()
    book.on_request(ROUTE_TYPE, ["routes"], [], {}, "", None)
    (good,) = book.due_responses(cache.snapshot())
    assert ack(book, good) is RequestKind.ACK
    cache.set_resources({ROUTE_TYPE: named("routes", tag="bad")})
    (bad,) = book.due_responses(cache.snapshot())
    outcome = book.on_request(ROUTE_TYPE, [], [], {}, bad.nonce, "duplicate domain")
    assert (outcome.kind, outcome.version, outcome.in_force, outcome.detail) == (
        RequestKind.NACK, bad.version, good.version, "duplicate domain",
    )
    type_book = book.types[ROUTE_TYPE]
    assert (type_book.acked_version, type_book.rejected_version) == (good.version, bad.version)
    assert book.due_responses(cache.snapshot()) == []
    cache.set_resources({ROUTE_TYPE: named("routes", tag="fixed")})
    (fixed,) = book.due_responses(cache.snapshot())
    assert ack(book, fixed) is RequestKind.ACK and book.types[ROUTE_TYPE].acked_version == fixed.version
    # A nonce answered already (or never sent) is stale.
    assert ack(book, fixed) is RequestKind.STALE


def test_resource_versions_move_only_for_resources_that_changed() -> None:
    cache = SnapshotCache()
    cache.set_resources({CLUSTER_TYPE: named("a", "b")})
    before = dict(cache.snapshot()[CLUSTER_TYPE].resource_versions)
    cache.set_resources({CLUSTER_TYPE: {**named("a"), **named("b", tag="v2")}})
    after = cache.snapshot()[CLUSTER_TYPE]
    assert after.resource_versions["a"] == before["a"]
    assert after.resource_versions["b"] == after.version != before["b"]
