"""A real Prometheus server for the local mode and the tests: its scrape config, and the process itself.

Kapa's scaler reads the queue-proxies' counters through Prometheus, so locally and in tests we run the very
binary a cluster runs (Debian package `prometheus`), not an imitation. The config has the two jobs the chart
also uses:

- SCRAPE_JOB_SCALING scrapes only the scaling counters (SCALING_METRICS_PATH) every
  SCALING_SCRAPE_INTERVAL_S (1 s): the 6 s panic window needs several samples, and rate() over a window W
  of a request-seconds counter is the exact average concurrency over W only if W holds at least two.
- SCRAPE_JOB_METRICS scrapes everything else (METRICS_PATH) at the usual 15 s and drops the scaling
  counters there, so each series is stored once.

A third job, SCRAPE_JOB_SCALER, scrapes the scaler's own metrics (the decisions the dashboard shows) at 15 s.

Targets come from a file_sd file that `set_targets` rewrites atomically; Prometheus watches the file and
picks up new or removed replicas with no restart or reload. Expect up to 5 s before a change is scraped:
Prometheus's discovery manager hands target updates to the scrapers in 5 s batches (also at start-up).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import aiohttp
import yaml

from kapa.core import contract
from kapa.core.log import get_logger
from kapa.local.processes import die_with_parent

log = get_logger(__name__)

DEFAULT_BINARY = "/usr/bin/prometheus"
MISSING_BINARY_HINT = "install Debian package prometheus: apt-get install prometheus"
TARGETS_FILE = "targets.json"


class PrometheusNotInstalled(RuntimeError):
    """The Prometheus binary is not there; the message says how to install it."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One process Prometheus scrapes (a queue-proxy's or the activator's metrics port), with extra labels."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))


def _scaling_series_regex() -> str:
    """Regex matching the scaling counters as exposed, including the `_created` samples client libraries add."""
    names: list[str] = []
    for name in contract.SCALING_METRICS:
        names.append(name)
        if name.endswith("_total"):
            names.append(name.removesuffix("_total") + "_created")
    return "|".join(re.escape(name) for name in names)


def scrape_configs(discovery: Mapping[str, object]) -> list[dict[str, object]]:
    """The two Kapa scrape jobs over the targets that `discovery` finds.

    `discovery` is a Prometheus service-discovery section, e.g. `{"file_sd_configs": [...]}` for the local
    mode or `{"kubernetes_sd_configs": [...], "relabel_configs": [...]}` for a cluster; both jobs use it.
    """
    scaling: dict[str, object] = {
        "job_name": contract.SCRAPE_JOB_SCALING,
        "metrics_path": contract.SCALING_METRICS_PATH,
        "scrape_interval": f"{contract.SCALING_SCRAPE_INTERVAL_S}s",
        "scrape_timeout": f"{contract.SCALING_SCRAPE_INTERVAL_S}s",
        **copy.deepcopy(dict(discovery)),
    }
    everything: dict[str, object] = {
        "job_name": contract.SCRAPE_JOB_METRICS,
        "metrics_path": contract.METRICS_PATH,
        "scrape_interval": f"{contract.METRICS_SCRAPE_INTERVAL_S}s",
        "scrape_timeout": f"{min(10, contract.METRICS_SCRAPE_INTERVAL_S)}s",
        **copy.deepcopy(dict(discovery)),
        "metric_relabel_configs": [
            {"source_labels": ["__name__"], "regex": _scaling_series_regex(), "action": "drop"},
        ],
    }
    return [scaling, everything]


def scaler_scrape_config(discovery: Mapping[str, object]) -> dict[str, object]:
    """The job for the scaler's own metrics (kapa_scaler_*) on METRICS_PATH of the targets `discovery` finds.

    A job of its own rather than a target of the two above: the scaler serves no SCALING_METRICS_PATH, and
    nothing it exports is read for scaling, so the usual interval is enough.
    """
    return {
        "job_name": contract.SCRAPE_JOB_SCALER,
        "metrics_path": contract.METRICS_PATH,
        "scrape_interval": f"{contract.METRICS_SCRAPE_INTERVAL_S}s",
        "scrape_timeout": f"{min(10, contract.METRICS_SCRAPE_INTERVAL_S)}s",
        **copy.deepcopy(dict(discovery)),
    }


def local_config(targets_file: Path, scaler_address: str | None = None) -> dict[str, object]:
    """A whole prometheus.yml for the local mode and tests: both jobs over a watched file_sd file, and with
    `scaler_address` (host:port of the scaler's HTTP API) the scaler's own job."""
    discovery = {"file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}]}
    jobs = scrape_configs(discovery)
    if scaler_address is not None:
        jobs.append(scaler_scrape_config({"static_configs": [{"targets": [scaler_address]}]}))
    return {
        "global": {"scrape_interval": f"{contract.METRICS_SCRAPE_INTERVAL_S}s", "evaluation_interval": "15s"},
        "scrape_configs": jobs,
    }


def write_targets(path: Path, targets: Iterable[ScrapeTarget]) -> None:
    """Write a file_sd targets file atomically (temp file + rename), so Prometheus never reads half a file."""
    groups = [{"targets": [target.address], "labels": dict(target.labels)} for target in targets]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".targets-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(groups, handle, indent=1)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """A Prometheus process on loopback with its own config, storage and targets, for as long as we need it.

    Use `async with PrometheusServer() as prometheus:` or start()/stop(). It can be stopped and started
    again on the same port and storage (tests use that to check the scaler rides out an outage).
    """

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        targets: Sequence[ScrapeTarget] = (),
        retention: str = "2h",
        binary: str = DEFAULT_BINARY,
        log_path: Path | None = None,
        scaler_address: str | None = None,
    ) -> None:
        self.port = port or _free_loopback_port()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kapa-prometheus-"))
        self.targets_file = self.workdir / TARGETS_FILE
        self.config_file = self.workdir / "prometheus.yml"
        self.retention = retention
        self.binary = binary
        self.log_path = log_path or self.workdir / "prometheus.log"
        self._targets: tuple[ScrapeTarget, ...] = tuple(targets)
        #: host:port of the scaler's HTTP API, scraped by its own job; None: no scaler to scrape.
        self.scaler_address = scaler_address
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets(self) -> tuple[ScrapeTarget, ...]:
        return self._targets

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def set_targets(self, targets: Iterable[ScrapeTarget]) -> None:
        """Replace the scraped targets; a running Prometheus scrapes the new set within about 5 s."""
        self._targets = tuple(targets)
        write_targets(self.targets_file, self._targets)

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    async def start(self, ready_timeout_s: float = 20.0) -> None:
        """Write the config and targets, launch Prometheus and return once /-/ready answers 200."""
        if self.running:
            return
        if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
            raise PrometheusNotInstalled(f"Prometheus binary not found at {self.binary}; {MISSING_BINARY_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = local_config(self.targets_file, self.scaler_address)
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        write_targets(self.targets_file, self._targets)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                self.command(), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        try:
            await self._wait_ready(ready_timeout_s)
        except BaseException:
            await self.stop()
            raise
        log.info("prometheus started", url=self.url, pid=self._process.pid, workdir=str(self.workdir))

    async def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"prometheus exited with {self._process.returncode}: {self._log_tail()}")
                try:
                    async with session.get(f"{self.url}/-/ready") as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prometheus not ready after {timeout_s}s: {self._log_tail()}")
                await asyncio.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (Prometheus flushes its head block), wait, then SIGKILL; keeps the storage for a restart."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                process.kill()
        process.wait()

    async def close(self) -> None:
        """Stop, and remove the working directory if we created it."""
        await self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> PrometheusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
