"""`kapa up` as a new user meets it: started as `make up` starts it (.venv/bin/kapa, which is not on PATH), its
banner's commands pasted into a second terminal work as printed, and in a terminal the live view says what
its figures are and where a bad annotation went."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from kapa.core.contract import MODE_PROXY, MODE_SERVE, knative_annotation
from kapa.local import up as kapa_up
from tests.local.harness import KapaUp, hello_services, isolated_env

#: What `make up` runs: the environment's console script.
VENV_KAPA = Path(sys.executable).parent / "kapa"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def _without_venv_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = VENV_KAPA.parent.resolve()
    path = [entry for entry in os.environ.get("PATH", "").split(os.pathsep)
            if entry and Path(entry).resolve() != bin_dir]
    monkeypatch.setenv("PATH", os.pathsep.join(path))


@pytest.mark.parametrize(
    ("argv0", "on_path", "expected"),
    [
        ("{bin}/kapa", False, "the script"),  # make up: .venv/bin/kapa, not on PATH
        ("bin dir/kapa", False, "the script"),  # started by a relative path: absolute, for any directory
        ("{bin}/kapa", True, "kapa"),  # PATH finds this very kapa
        ("{root}/kapa/__main__.py", False, "python -m kapa"),
    ],
)
def test_kapa_command_works_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv0: str, on_path: bool, expected: str
) -> None:
    bin_dir = tmp_path / "bin dir"  # a space, so the path must be quoted
    bin_dir.mkdir()
    script = bin_dir / "kapa"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir) if on_path else "/nonexistent")
    monkeypatch.setattr(sys, "argv", [argv0.format(bin=bin_dir, root=tmp_path), "up"])
    command = kapa_up.kapa_command()
    assert command == {"the script": shlex.quote(str(script)), "kapa": "kapa",
                       "python -m kapa": f"{shlex.quote(sys.executable)} -m kapa"}[expected]


@pytest.mark.slow
async def test_the_banner_commands_work_pasted_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert VENV_KAPA.is_file(), VENV_KAPA
    _without_venv_on_path(monkeypatch)
    second_terminal = tmp_path / "elsewhere"
    second_terminal.mkdir()

    async def paste(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(subprocess.run, argv, cwd=second_terminal, env=isolated_env(tmp_path),
                                       capture_output=True, text=True, timeout=60)

    up = await KapaUp.start(tmp_path, hello_services({}), kapa=(str(VENV_KAPA),))
    try:
        await up.wait_replicas(1, timeout_s=30)
        load = shlex.split(next(line for line in up.output if " load " in line))
        assert load[0] == str(VENV_KAPA)
        # As printed, but 2 connections for 1 s rather than 50 for 30 s.
        load[load.index("-c") + 1], load[load.index("-z") + 1] = "2", "1s"
        result = await paste(load)
        assert result.returncode == 0 and "[200]" in result.stdout, result.stdout + result.stderr

        explain = shlex.split(next(line for line in up.output if "in words:" in line).split("in words:", 1)[1])
        result = await paste(explain)
        assert result.returncode == 0 and "default/hello: metric concurrency" in result.stdout, result.stderr
        # Without --scaler, `kapa explain` asks the running kapa up.
        result = await paste(explain[: explain.index("--scaler")])
        assert result.returncode == 0 and "default/hello: metric concurrency" in result.stdout, result.stderr

        # The scaler decides the routing without Envoy too; the lines say which.
        await up.wait_for(lambda: bool(up.latest and up.latest.mode in (MODE_SERVE, MODE_PROXY)), 10,
                          "the scaler's mode")
    finally:
        await up.stop()


class _Terminal:
    """A pseudo-terminal 160 columns wide for `kapa up`'s live view, its screen read as plain text."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self._raw = bytearray()
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            self._raw += os.read(self.master, 65536)
        except OSError:  # the other side is closed
            asyncio.get_running_loop().remove_reader(self.master)

    def lines(self) -> list[str]:
        return _ANSI.sub("", self._raw.decode(errors="replace")).split("\n")

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


@pytest.mark.slow
async def test_the_live_view_names_its_units_and_the_mode_and_the_log_has_the_warnings(tmp_path: Path) -> None:
    annotations = {knative_annotation("metric"): "rps", knative_annotation("target"): "ten"}
    services_file = tmp_path / "services.yaml"
    services_file.write_text(yaml.safe_dump(hello_services(annotations)))
    terminal = _Terminal()
    stderr_path = tmp_path / "kapa-up.stderr"
    with open(stderr_path, "wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            str(VENV_KAPA), "up", "--services", str(services_file), stdin=terminal.slave, stdout=terminal.slave,
            stderr=stderr, start_new_session=True, env=isolated_env(tmp_path))
    os.close(terminal.slave)

    def row() -> str:
        rows = [line for line in terminal.lines()
                if line.strip().startswith("default/hello") and "replicas" not in line]  # not the sparkline
        return rows[-1] if rows else ""

    try:
        deadline = time.monotonic() + 40
        while not (" req/s " in row() and (MODE_SERVE in row() or MODE_PROXY in row())):
            assert process.returncode is None, stderr_path.read_text()
            assert time.monotonic() < deadline, "\n".join(terminal.lines()[-30:])
            await asyncio.sleep(0.2)
        # The bad target: on the terminal before the view, and in kapa up's log file (the screen is the view's).
        assert "kapa up: warning: " in stderr_path.read_text() and "'ten'" in stderr_path.read_text()
        (log_file,) = tmp_path.glob("kapa-up-*/logs/kapa-up.log")
        logged = [line for line in log_file.read_text().splitlines() if "level=warning" in line]
        assert any("autoscaling.knative.dev/target" in line and "'ten'" in line for line in logged), logged
        os.killpg(process.pid, signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        terminal.close()
