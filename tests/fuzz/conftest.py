"""The harness the fuzzing tests share: one event loop for all the inputs a module replays."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.harness import Harness


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()
