"""Ctrl-C stops everything `kapa up` started, under load, with replicas coming and going: no process is left."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from kapa.contract import knative_annotation
from tests.local.harness import KapaUp, hello_services

pytestmark = pytest.mark.slow


async def test_ctrl_c_under_load_leaves_no_process_behind(tmp_path: Path) -> None:
    annotations = {knative_annotation("target"): "10", knative_annotation("target-utilization-percentage"): "100"}
    up = await KapaUp.start(tmp_path, hello_services(annotations))
    load = asyncio.create_task(up.load(concurrency=30, duration_s=20))
    try:
        await up.wait_for(lambda: bool(up.latest and up.latest.ready >= 3), 20, "3 ready replicas")
        children = up.descendants()
        # Prometheus, the activator and an app + queue-proxy per replica.
        assert len(children) >= 2 + 2 * 3, children
        began = time.monotonic()
        await up.stop(sig=signal.SIGINT)  # asserts exit code 0 and that none of `children` survives
        assert time.monotonic() - began < 15
        assert "kapa up: stopped" in up.output
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        if up.process.returncode is None:
            await up.stop(check=False)
