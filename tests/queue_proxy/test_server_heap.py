from __future__ import annotations

import gc

from queue_proxy.server import freeze_startup_heap


def test_full_collection_no_longer_walks_the_startup_heap() -> None:
    tracked_before = len(gc.get_objects())
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= tracked_before // 2
        assert len(gc.get_objects()) < tracked_before // 10
        cycle: list[object] = []
        cycle.append(cycle)  # garbage made after the freeze is still collected
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
