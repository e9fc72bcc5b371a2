"""Child processes of `kapa up`, each in its own process group, so stopping one stops everything it started.

Every child is started through one `Supervisor`, which remembers it until it has exited: whatever else goes
wrong, `stop_all()` leaves no process behind (a test checks it). And since a SIGKILLed `kapa up` runs no
stop at all, every child also dies with it (`die_with_parent`, Linux's parent-death signal). A `Keeper`
starts a part of `kapa up` again whenever it exits, as a kubelet restarts a container (restartPolicy
Always, CrashLoopBackOff).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kapa.core.log import get_logger

log = get_logger(__name__)

#: prctl(2) option: the signal the calling process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
# Loaded here, not in the forked child, where nothing should be looked up or loaded.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for a child of this process: Linux SIGKILLs the child when this process dies, however
    it dies (SIGKILL, a crash), so a `kapa up` that cannot run its stop still leaves nothing running.

    SIGKILL because nothing is left to escalate to it after a SIGTERM that is ignored. The signal comes
    when the *thread* that started the child ends: kapa up starts every child from its event loop's thread,
    which lives as long as it does. A parent that died before the prctl took effect is caught by comparing
    the parent pid, as prctl(2) advises.
    """
    parent_pid = os.getpid()

    def in_child() -> None:
        if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
        if os.getppid() != parent_pid:
            os._exit(1)

    return in_child


@dataclass(eq=False)
class Child:
    """A running child: its name (for logs and the view), the process and where its output goes."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None


class Supervisor:
    """Starts children in new sessions (own process groups), each dying with this process, and stops whole
    groups: SIGTERM, wait, SIGKILL."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: set[Child] = set()
        self._spawning: set[asyncio.Future[Child]] = set()
        self._reapers: set[asyncio.Task[None]] = set()

    @property
    def children(self) -> frozenset[Child]:
        return frozenset(self._children)

    async def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        """Start `argv` with os.environ plus `env`; stdout and stderr go to LOG_DIR/NAME.log.

        The spawn itself is shielded: a caller cancelled mid-spawn (kapa up stopping) must not lose track of
        a process that does get started, so stop_all() waits for spawns in progress and stops their children.
        """
        spawn = asyncio.ensure_future(self._spawn(name, argv, env))
        self._spawning.add(spawn)
        spawn.add_done_callback(self._spawning.discard)
        return await asyncio.shield(spawn)

    async def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env={**os.environ, **(env or {})},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        child = Child(name, process, log_path)
        self._children.add(child)
        reaper = asyncio.get_running_loop().create_task(self._forget_when_done(child))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        return child

    async def _forget_when_done(self, child: Child) -> None:
        await child.process.wait()
        # The group may still hold grandchildren (a shell wrapper's app): never leave them behind.
        _signal_group(child.pid, signal.SIGKILL)
        self._children.discard(child)

    async def stop(self, child: Child, grace_s: float) -> int:
        """SIGTERM the child's group, wait up to grace_s for the child to exit, then SIGKILL the group."""
        if child.running:
            _signal_group(child.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.process.wait(), grace_s)
        if child.running:
            log.info("child still running after its grace period, killing it", child=child.name, pid=child.pid,
                     grace_s=grace_s)
        _signal_group(child.pid, signal.SIGKILL)
        return await child.process.wait()

    async def stop_all(self, grace_s: float) -> None:
        """Stop every child still known, all at once (after any spawn in progress has finished)."""
        await asyncio.gather(*self._spawning, return_exceptions=True)
        await asyncio.gather(*(self.stop(child, grace_s) for child in list(self._children)))


@dataclass(frozen=True)
class RestartBackoff:
    """The kubelet's CrashLoopBackOff at a laptop's scale: the first restart comes after `first_s`, each quick
    exit doubles the delay up to `max_s`, and a run of at least `healthy_run_s` starts the doubling over (the
    kubelet: 10 s, 5 min and 10 min; a local part starts in about a second, so its outage is what counts)."""

    first_s: float = 0.5
    max_s: float = 30.0
    healthy_run_s: float = 10.0

    def next_delay(self, previous_s: float | None, ran_s: float) -> float:
        """The delay before the next start, after a run of `ran_s` that followed a delay of `previous_s`."""
        if previous_s is None or ran_s >= self.healthy_run_s:
            return self.first_s
        return min(self.max_s, 2 * previous_s)


class Keeper:
    """Keeps one part of `kapa up` running: when `exited()` returns, waits the backoff and calls `start()`
    again, for as long as `run()` is not cancelled. A start that fails (the part exits before it is ready,
    or never gets ready) counts as a quick exit, so a part that cannot start is retried ever more slowly,
    never given up on: kapa up, like a kubelet, keeps its parts running without anyone watching."""

    def __init__(self, name: str, start: Callable[[], Awaitable[None]], exited: Callable[[], Awaitable[object]],
                 backoff: RestartBackoff = RestartBackoff()) -> None:
        self.name = name
        self._start = start
        self._exited = exited
        self._backoff = backoff
        #: Successful starts after an exit.
        self.restarts = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay_s: float | None = None
        while True:
            running_since = loop.time()
            outcome = await self._exited()
            delay_s = self._backoff.next_delay(delay_s, loop.time() - running_since)
            log.error("part exited; starting it again", part=self.name, exit=outcome, delay_s=delay_s)
            await asyncio.sleep(delay_s)
            try:
                await self._start()
            except (RuntimeError, TimeoutError, OSError) as error:
                log.error("part did not start; will retry", part=self.name, error=str(error))
                continue
            self.restarts += 1
            log.info("part running again", part=self.name, restarts=self.restarts)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each child leads its own session, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
