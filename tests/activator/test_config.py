"""Per-service settings from the services file, with bad annotations costing only their key."""

from __future__ import annotations

import logging

import pytest

from kapa.core import contract
from kapa.core.services import parse_services

from activator.config import settings_from_entries


def settings(annotations: dict[str, str]):  # type: ignore[no-untyped-def]
    document = {"services": [{"name": "hello", "annotations": annotations, "hosts": ["hello.localhost"],
                              "pathPrefix": "/hello", "local": {"command": ["x"]}}]}
    (result,) = settings_from_entries(parse_services(document))
    return result


@pytest.mark.parametrize(
    ("annotations", "concurrency", "timeout_s"),
    [
        ({}, 0, 300.0),
        ({contract.ANNOTATION_CONTAINER_CONCURRENCY: "1", contract.ANNOTATION_TIMEOUT_SECONDS: "2.5"}, 1, 2.5),
        ({contract.ANNOTATION_CONTAINER_CONCURRENCY: "-1"}, 0, 300.0),
        ({contract.ANNOTATION_CONTAINER_CONCURRENCY: "1.5"}, 0, 300.0),
        ({contract.ANNOTATION_TIMEOUT_SECONDS: "lots"}, 0, 300.0),
        ({contract.ANNOTATION_TIMEOUT_SECONDS: "601"}, 0, 300.0),
    ],
)
def test_annotations(annotations: dict[str, str], concurrency: int, timeout_s: float, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = settings(annotations)
    assert (result.container_concurrency, result.timeout_s) == (concurrency, timeout_s)
    assert result.hosts[-1] == "hello.localhost" and result.path_prefix == "/hello"
    if (concurrency, timeout_s) == (0, 300.0) and annotations:
        assert any("hello" in str(r.__dict__) for r in caplog.records)
