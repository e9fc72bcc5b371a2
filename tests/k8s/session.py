"""One Kubernetes test session per machine at a time, and nothing left over from one that was killed.

The pod bridge, its subnet and the pod namespaces have fixed names, so two sessions (say two `make test`
runs) would tear down each other's network: the second waits for the first under an exclusive lock. Every
long-lived process a session starts is recorded in PIDS; a session that finds the file (its predecessor
was SIGKILLed and could not clean up) kills those processes, if they are still ours, before it sweeps the
network and starts.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = Path("/var/tmp/kapa-k8s.lock")
PIDS = Path("/var/tmp/kapa-k8s.pids")
#: Substrings of the command lines this module may kill (the built binaries and the process kubelet).
OURS = ("/.cache/kapa/", "tests.k8s.kubelet", "kapa-k8s-")


def record(pid: int) -> None:
    with open(PIDS, "a") as file:
        file.write(f"{pid}\n")


def _ours(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(mark in command for mark in OURS)


def kill_leftovers() -> list[int]:
    """Kill (by process group) every recorded process that still runs one of our commands."""
    killed = []
    if PIDS.exists():
        for line in PIDS.read_text().split():
            pid = int(line)
            if _ours(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                    killed.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        PIDS.unlink()
    return killed


@contextmanager
def exclusive(timeout_s: float) -> Iterator[None]:
    """Hold the machine-wide lock for the session (waiting up to timeout_s for another session to end)."""
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another Kubernetes test session holds {LOCK} after {timeout_s}s") from None
                time.sleep(1)
        try:
            kill_leftovers()
            yield
        finally:
            PIDS.unlink(missing_ok=True)
