"""However `kapa up` ends, nothing it started is left running: Ctrl-C under load, Ctrl-C with its output piped
into a reader that has exited, and a SIGKILL of kapa up itself (which runs no stop at all)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from kapa.core.contract import knative_annotation
from tests.local.harness import KapaUp, descendants, hello_services, isolated_env

pytestmark = pytest.mark.slow


class ProcessWatch:
    """Every process seen below `root` while it ran, polled until stopped: kapa up's children are reparented
    when it dies, and replicas come and go, so a snapshot at the end would miss some. A process is known by
    pid and start time, so a pid reused by an unrelated process is not mistaken for a survivor."""

    def __init__(self, root: int, interval_s: float = 0.05) -> None:
        self.root = root
        self.seen: dict[int, str] = {}
        self._interval_s = interval_s
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            for pid in descendants(self.root):
                if pid not in self.seen and (started := _start_time(pid)) is not None:
                    self.seen[pid] = started
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def alive(self) -> dict[int, str]:
        """The processes seen that still run (the same pid with the same start time, and not a zombie)."""
        return {pid: _command(pid) for pid, started in self.seen.items() if _start_time(pid) == started}

    async def wait_gone(self, timeout_s: float) -> dict[int, str]:
        """Wait up to timeout_s for every process seen to be gone; kill and return those still running."""
        deadline = time.monotonic() + timeout_s
        while (alive := self.alive()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for pid in alive:  # never leave them for the next test, but fail this one
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return alive


def _stat_fields(pid: int) -> list[str] | None:
    try:
        # The command name may contain spaces and parentheses: fields follow the last ')'.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    # fields[0] is field 3 of proc(5) (state), so field 22 (starttime) is fields[19].
    return None if fields is None or fields[0] == "Z" else fields[19]


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
        await asyncio.sleep(0.1)


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


@pytest.mark.parametrize(
    "reader",
    [
        # `kapa up | head -1`: the reader is gone before the banner's second line; kapa up stops at that line.
        ["head", "-n", "1"],
        # `kapa up | tee log`, Ctrl-C ending tee first: the reader is gone, then Ctrl-C; "stopping" goes nowhere.
        ["sed", "/in words:/q"],
    ],
    ids=["head-1", "reader-gone-then-ctrl-c"],
)
async def test_piped_into_a_reader_that_exits_then_ctrl_c_leaves_no_process_behind(
    tmp_path: Path, reader: list[str]
) -> None:
    services_file = tmp_path / "services.yaml"
    services_file.write_text(yaml.safe_dump(hello_services({})))
    env = isolated_env(tmp_path)
    stderr_path = tmp_path / "kapa-up.stderr"
    with open(stderr_path, "wb") as stderr:
        # As a shell runs a pipeline: one process group, which Ctrl-C signals as a whole.
        up = subprocess.Popen([sys.executable, "-m", "kapa", "up", "--no-view", "--services", str(services_file)],
                              stdout=subprocess.PIPE, stderr=stderr, process_group=0, env=env)
    assert up.stdout is not None
    with up.stdout:
        consumer = subprocess.Popen(reader, stdin=up.stdout, stdout=subprocess.PIPE, process_group=up.pid)
    watch = ProcessWatch(up.pid)
    try:
        # The reader has read what it wanted and exited: the pipe is closed for kapa up from now on.
        await _until(lambda: consumer.poll() is not None, 40, "reader exit")
        assert consumer.stdout is not None and consumer.stdout.read().startswith(b"kapa up: running 1 service(s)")
        if up.poll() is None:
            # Until a replica runs (unless kapa up is already on its way out), then Ctrl-C.
            await _until(lambda: up.poll() is not None or any("queue_proxy" in command for command in
                                                            map(_command, descendants(up.pid))), 30, "a replica")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, signal.SIGINT)
        await _until(lambda: up.poll() is not None, 30, "kapa up's exit")
    finally:
        await watch.stop()
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        survivors = await watch.wait_gone(timeout_s=2)
    logged = stderr_path.read_text(errors="replace")
    assert not survivors, f"processes left behind by kapa up: {survivors}\n{logged[-3000:]}"
    # Prometheus, the scaler and the activator at least were started (and are gone).
    assert len(watch.seen) >= 3, watch.seen
    assert up.returncode == 0 and "Traceback" not in logged, logged[-3000:]
    # Its scaler is no longer announced to `kapa explain`.
    assert not list((tmp_path / "kapa" / "up").glob("*.url"))


async def test_sigkill_of_kapa_up_leaves_no_process_behind(tmp_path: Path) -> None:
    """A SIGKILLed kapa up runs no stop: its children go by Linux's parent-death signal."""
    up = await KapaUp.start(tmp_path, hello_services({}))
    watch = ProcessWatch(up.process.pid)
    try:
        await up.wait_replicas(1, timeout_s=30)
        await _until(lambda: len(watch.seen) >= 5, 10, "Prometheus, scaler, activator, app and queue-proxy seen")
        os.kill(up.process.pid, signal.SIGKILL)
        await up.process.wait()
    finally:
        await watch.stop()
        survivors = await watch.wait_gone(timeout_s=5)
        await up.stop(check=False)
    assert not survivors, f"processes left behind by a SIGKILLed kapa up: {survivors}"
