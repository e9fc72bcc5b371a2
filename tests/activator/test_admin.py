"""The local endpoint feed's body format."""

from __future__ import annotations

import pytest

from kapa.core.services import Endpoint

from activator.admin import BadEndpoints, parse_endpoints


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'["127.0.0.1:8012", "10.0.0.2:9000"]', [Endpoint("127.0.0.1", 8012), Endpoint("10.0.0.2", 9000)]),
        (b'["[::1]:8012"]', [Endpoint("::1", 8012)]),
        (b"[]", []),
    ],
)
def test_parse_endpoints(body: bytes, expected: list[Endpoint]) -> None:
    assert parse_endpoints(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"a": 1}', "JSON list"),
        (b'["127.0.0.1"]', "127.0.0.1"),
        (b'["127.0.0.1:http"]', "127.0.0.1:http"),
        (b'["127.0.0.1:70000"]', "70000"),
        (b"[8012]", "8012"),
    ],
)
def test_bad_endpoints_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(BadEndpoints, match=message):
        parse_endpoints(body)
