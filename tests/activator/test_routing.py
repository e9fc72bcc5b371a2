"""Host and path-prefix routing."""

from __future__ import annotations

import pytest

from kapa.core.services import ServiceKey

from activator.config import ServiceSettings
from activator.routing import Router, RoutingError

HELLO = ServiceKey("default", "hello")
API = ServiceKey("shop", "api")
API_V2 = ServiceKey("shop", "api-v2")

ROUTER = Router([
    ServiceSettings(HELLO, HELLO.hosts() + ("hello.localhost",)),
    ServiceSettings(API, API.hosts(), path_prefix="/api"),
    ServiceSettings(API_V2, API_V2.hosts(), path_prefix="/api/v2"),
])


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        (b"hello.default", b"/", HELLO),
        (b"hello.default.svc.cluster.local:8080", b"/x", HELLO),
        (b"HELLO.localhost", b"/", HELLO),
        (b"127.0.0.1:8013", b"/api", API),
        (b"127.0.0.1:8013", b"/api/items?x=1", API),
        (b"127.0.0.1:8013", b"/api?x=1", API),
        (b"hello.default", b"/api/v2/items", API_V2),  # a path prefix wins over the Host
        (b"127.0.0.1:8013", b"/apiary", None),  # a prefix matches whole segments only
        (b"unknown.example", b"/", None),
        (None, b"/", None),
        (b"[::1]:8013", b"/", None),
    ],
)
def test_route(host: bytes | None, path: bytes, expected: ServiceKey | None) -> None:
    assert ROUTER.route(host, path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [(b"/", HELLO), (b"/anything?x=1", HELLO), (b"/api/items", API)],
)
def test_prefix_with_trailing_slash_matches_below_it(path: bytes, expected: ServiceKey) -> None:
    router = Router([ServiceSettings(HELLO, (), path_prefix="/"), ServiceSettings(API, (), path_prefix="/api")])
    assert router.route(None, path) == expected


def test_a_host_claimed_twice_is_an_error() -> None:
    with pytest.raises(RoutingError, match="hello.localhost"):
        Router([ServiceSettings(HELLO, ("hello.localhost",)), ServiceSettings(API, ("hello.localhost",))])
