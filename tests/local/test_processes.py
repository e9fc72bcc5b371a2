"""kapa up keeps its parts running as a kubelet keeps a pod's containers: the restart backoff, and a Keeper
starting a real process again after a SIGKILL, and retrying a start that fails without counting it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kapa.local.processes import Child, Keeper, RestartBackoff, Supervisor


@pytest.mark.parametrize(
    ("previous_s", "ran_s", "expected_s"),
    [
        (None, 0.0, 0.5),  # the first exit
        (None, 100.0, 0.5),
        (0.5, 0.2, 1.0),  # a quick exit (a start that failed runs for no time): twice as long
        (8.0, 9.9, 16.0),
        (16.0, 1.0, 30.0),  # capped
        (30.0, 1.0, 30.0),
        (30.0, 10.0, 0.5),  # after a healthy run, from the start again
    ],
)
def test_restart_backoff(previous_s: float | None, ran_s: float, expected_s: float) -> None:
    assert RestartBackoff().next_delay(previous_s, ran_s) == expected_s


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
        await asyncio.sleep(0.02)


async def test_a_killed_part_is_started_again_and_a_start_that_fails_is_retried(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    children: list[Child] = []
    attempts: list[float] = []
    can_start = True

    async def start() -> None:
        attempts.append(time.monotonic())
        if not can_start:
            raise RuntimeError("the part exited before it was ready")
        children.append(await supervisor.start("part", ["sleep", "60"]))

    async def exited() -> int:
        return await children[-1].process.wait()

    await start()
    keeper = Keeper("part", start, exited, RestartBackoff(first_s=0.05, max_s=0.2))
    keeping = asyncio.create_task(keeper.run())
    try:
        os.kill(children[0].pid, signal.SIGKILL)
        await _until(lambda: keeper.restarts == 1, 10, "restart")
        assert len(children) == 2 and children[1].running and children[1].pid != children[0].pid

        can_start = False
        os.kill(children[1].pid, signal.SIGKILL)
        await _until(lambda: len(attempts) >= 5, 10, "retries of a start that fails")
        assert keeper.restarts == 1

        can_start = True
        await _until(lambda: keeper.restarts == 2, 10, "the start that works again")
        assert children[-1].running
    finally:
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
        await supervisor.stop_all(1)
    assert not supervisor.children
