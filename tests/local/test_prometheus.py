"""kapa.local.prometheus: the generated scrape config, and a real Prometheus started, re-targeted, restarted."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from kapa.core import contract
from kapa.local.prometheus import (
    MISSING_BINARY_HINT,
    PrometheusNotInstalled,
    PrometheusServer,
    ScrapeTarget,
    local_config,
    scrape_configs,
    write_targets,
)
from tests.support import free_port


def test_two_jobs_scaling_counters_every_second_and_stored_once() -> None:
    discovery = {"static_configs": [{"targets": ["127.0.0.1:9091"]}]}
    scaling, everything = scrape_configs(discovery)
    assert (scaling["job_name"], scaling["metrics_path"], scaling["scrape_interval"]) == (
        contract.SCRAPE_JOB_SCALING, contract.SCALING_METRICS_PATH, "1s"
    )
    assert (everything["job_name"], everything["metrics_path"], everything["scrape_interval"]) == (
        contract.SCRAPE_JOB_METRICS, contract.METRICS_PATH, "15s"
    )
    assert scaling["static_configs"] == everything["static_configs"] == discovery["static_configs"]
    (drop,) = everything["metric_relabel_configs"]  # type: ignore[misc]
    assert drop["action"] == "drop" and drop["source_labels"] == ["__name__"]
    dropped = re.compile(drop["regex"])  # Prometheus anchors relabel regexes: fullmatch
    for name in contract.SCALING_METRICS:
        assert dropped.fullmatch(name)
    assert dropped.fullmatch("kapa_requests_created")
    for kept in (contract.REQUEST_DURATION + "_bucket", contract.REQUESTS_IN_FLIGHT, contract.QUEUE_DEPTH):
        assert not dropped.fullmatch(kept)


def test_generated_config_passes_promtool(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(local_config(tmp_path / "targets.json")))
    write_targets(tmp_path / "targets.json", [ScrapeTarget("127.0.0.1:9091", {"replica": "1"})])
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "targets.json").read_text()) == [
        {"targets": ["127.0.0.1:9091"], "labels": {"replica": "1"}}
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".targets-")] == []  # no temp files left


async def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    server = PrometheusServer(workdir=tmp_path, binary=str(tmp_path / "no-prometheus"))
    with pytest.raises(PrometheusNotInstalled, match=re.escape(MISSING_BINARY_HINT)):
        await server.start()


async def _active_targets(session: aiohttp.ClientSession, url: str) -> set[str]:
    async with session.get(f"{url}/api/v1/targets") as response:
        body = await response.json()
    return {target["labels"]["instance"] for target in body["data"]["activeTargets"]}


async def test_targets_change_at_runtime_and_restart_keeps_port(tmp_path: Path) -> None:
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    server = PrometheusServer(workdir=tmp_path / "p", targets=[ScrapeTarget(first)])
    async with server, aiohttp.ClientSession() as session:
        port, pid = server.port, server.pid
        server.set_targets([ScrapeTarget(second)])
        deadline = time.monotonic() + 15
        while await _active_targets(session, server.url) != {second}:
            assert time.monotonic() < deadline, "file_sd change not picked up"
            await asyncio.sleep(0.25)
        assert server.pid == pid  # no restart needed
        await server.stop()
        assert not server.running
        await server.start()
        assert server.port == port and server.running
        async with session.get(f"{server.url}/-/ready") as response:
            assert response.status == 200
    assert not server.running
