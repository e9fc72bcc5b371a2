"""Runs `kapa up --no-view` as a real child process and follows what it prints, for the end-to-end tests.

The tests see what a user sees: the banner (where to send traffic, Prometheus, explain), one line per
change of a service's replicas, panic mode or staleness, which become a timeline the scenarios check, and
one line per restart of a part kapa up keeps running. Every stop also checks that no process `kapa up`
started survives it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from kapa.core.contract import COMPONENT_ACTIVATOR, CONCURRENCY_SECONDS, LABEL_COMPONENT
from kapa.tools.load import LoadConfig, LoadResult, run_load

HOST = "hello.default"
_ENTRY = re.compile(r"Send traffic to (http://127\.0\.0\.1:\d+)")
_PROMETHEUS = re.compile(r"^Prometheus: (\S+)")
_EXPLAIN = re.compile(r"^Explain: +(\S+)")
_FIELD = re.compile(r"(\w+)=(\S+)")
_RESTART = re.compile(r"^part=(\S+) restarts=(\d+)$")


@dataclass(frozen=True)
class Sample:
    """One change line of `kapa up --no-view`, with when the test read it."""

    at: float
    desired: int
    ready: int
    starting: int
    draining: int
    panic_mode: bool
    stale: bool
    failures: int
    #: The scaler's routing mode (serve or proxy; Envoy acts on it, with --envoy), "-" before its first decision.
    mode: str


def parse_change(line: str, at: float) -> Sample | None:
    fields = dict(_FIELD.findall(line))
    if "desired" not in fields or "service" not in fields:
        return None
    return Sample(at, int(fields["desired"]), int(fields["ready"]), int(fields["starting"]), int(fields["draining"]),
                  fields["panic_mode"] == "true", fields["stale"] == "true", int(fields["failures"]), fields["mode"])


def hello_services(annotations: dict[str, str], startup_delay_s: float = 0.0) -> dict[str, object]:
    command = ["{python}", "-m", "kapa", "sample-app", "--port", "{port}"]
    if startup_delay_s:
        command += ["--startup-delay", str(startup_delay_s)]
    return {"services": [{"name": "hello", "namespace": "default", "annotations": annotations,
                          "local": {"command": command, "readinessPath": "/ready"}}]}


@dataclass
class KapaUp:
    """A running `kapa up --no-view`."""

    process: asyncio.subprocess.Process
    stderr_path: Path
    output: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    entry_url: str = ""
    prometheus_url: str = ""
    #: The scaler's explain URL of the first service.
    explain_url: str = ""
    #: (when read, part, its restarts so far), one per `part=... restarts=...` line.
    restarts: list[tuple[float, str, int]] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, workdir: Path, services: dict[str, object], config: dict[str, str] | None = None,
                    timeout_s: float = 40.0, extra_args: tuple[str, ...] = (),
                    kapa: tuple[str, ...] = (sys.executable, "-m", "kapa")) -> KapaUp:
        services_file = workdir / "services.yaml"
        services_file.write_text(yaml.safe_dump(services))
        args = [*kapa, "up", "--no-view", "--services", str(services_file), *extra_args]
        if config:
            config_file = workdir / "config.yaml"
            config_file.write_text(yaml.safe_dump(config))
            args += ["--config", str(config_file)]
        stderr_path = workdir / "kapa-up.stderr"
        with open(stderr_path, "wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=stderr, start_new_session=True, env=isolated_env(workdir),
            )
        up = cls(process, stderr_path)
        up._reader = asyncio.get_running_loop().create_task(up._read())
        try:
            await up.wait_for(lambda: bool(up.entry_url and up.prometheus_url), timeout_s, "the banner")
        except BaseException:
            await up.stop(check=False)
            raise
        return up

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.output.append(line)
            if match := _ENTRY.search(line):
                self.entry_url = match.group(1)
            elif match := _PROMETHEUS.search(line):
                self.prometheus_url = match.group(1)
            elif (match := _EXPLAIN.search(line)) and not self.explain_url:
                self.explain_url = match.group(1)
            elif sample := parse_change(line, time.monotonic()):
                self.samples.append(sample)
            elif match := _RESTART.match(line):
                self.restarts.append((time.monotonic(), match.group(1), int(match.group(2))))
            self._changed.set()

    def transcript(self, lines: int = 30) -> str:
        """The last lines kapa up printed, then the last lines it logged (for failure messages)."""
        logged = self.stderr_path.read_text(errors="replace").splitlines()
        return "\n".join(["stdout:", *self.output[-lines:], "stderr:", *logged[-lines:]])

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.process.returncode is not None:
                raise AssertionError(f"kapa up exited ({self.process.returncode}) waiting for {what}:\n"
                                     + self.transcript())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout_s}s:\n" + self.transcript())
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    async def wait_replicas(self, ready: int, timeout_s: float, desired: int | None = None) -> Sample:
        def reached() -> bool:
            latest = self.latest
            return latest is not None and latest.ready == ready and latest.desired == (
                ready if desired is None else desired)
        await self.wait_for(reached, timeout_s, f"{ready} ready replicas")
        assert self.latest is not None
        return self.latest

    async def wait_fresh(self, ready: int, timeout_s: float = 30.0) -> Sample:
        """`ready` replicas, the scaler's data fresh, and Prometheus holding two samples of each replica's own
        counters: the moment to start a scenario's load, which then counts wherever it goes (through the
        activator, which kapa up has scraped since its start, or with Envoy straight to a replica)."""
        def reached() -> bool:
            latest = self.latest
            return latest is not None and latest.ready == latest.desired == ready and not latest.stale
        deadline = time.monotonic() + timeout_s
        what = f"{ready} ready replicas with fresh metrics"
        await self.wait_for(reached, timeout_s, what)
        while await self._scraped_replicas() != ready or not reached():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what}, each scraped twice, within {timeout_s}s:\n" + self.transcript())
            await asyncio.sleep(0.2)
        assert self.latest is not None
        return self.latest

    async def _scraped_replicas(self) -> int:
        """Queue-proxies of which Prometheus holds two recent samples (what rate() needs)."""
        series = f'{CONCURRENCY_SECONDS}{{{LABEL_COMPONENT}!="{COMPONENT_ACTIVATOR}"}}'
        query = f"count(count_over_time({series}[5s]) >= 2)"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            async with session.get(f"{self.prometheus_url}/api/v1/query", params={"query": query}) as response:
                result = (await response.json())["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    def since(self, start: float) -> list[Sample]:
        """The samples from `start` on, with the one in force at `start` first."""
        before = [s for s in self.samples if s.at < start]
        return before[-1:] + [s for s in self.samples if s.at >= start]

    async def load(self, concurrency: int, duration_s: float, sleep_ms: int = 100) -> LoadResult:
        return await run_load(LoadConfig(f"{self.entry_url}/?sleep={sleep_ms}", concurrency=concurrency,
                                         duration_s=duration_s, headers=(("Host", HOST),), timeout_s=30.0))

    def descendants(self) -> set[int]:
        return descendants(self.process.pid)

    def processes(self, needle: str) -> list[int]:
        """Pids of the processes below kapa up whose command line contains `needle`."""
        pids = []
        for pid in self.descendants():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline:
                pids.append(pid)
        return sorted(pids)

    async def stop(self, check: bool = True, timeout_s: float = 30.0, sig: signal.Signals = signal.SIGTERM) -> int:
        """SIGTERM (or Ctrl-C's SIGINT); then (with check) nothing kapa up started may be left running."""
        started = self.descendants() if self.process.returncode is None else set()
        if self.process.returncode is None:
            os.kill(self.process.pid, sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout_s)
        finally:
            if self.process.returncode is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
            if self._reader is not None:
                await asyncio.wait([self._reader], timeout=2)
        survivors = {pid for pid in started if _alive(pid)}
        for pid in survivors:  # never leave them for the next test, but fail this one
            os.kill(pid, signal.SIGKILL)
        if check:
            assert not survivors, f"processes left behind by kapa up: {sorted(survivors)}"
            assert code == 0, f"kapa up exited with {code}:\n" + "\n".join(self.output[-20:])
        return code


def isolated_env(workdir: Path) -> dict[str, str]:
    """The environment for a `kapa up` (and the `kapa explain` finding it) of one test: its work directory
    (logs of every part) and the file announcing its scaler land in the test's own directory, where no other
    kapa up running on the machine sees them."""
    return {**os.environ, "TMPDIR": str(workdir), "XDG_RUNTIME_DIR": str(workdir)}


def descendants(root: int) -> set[int]:
    """Every live process below `root` (children start their own sessions, so follow parent pids)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # The command name may contain spaces and parentheses: fields follow the last ')'.
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
