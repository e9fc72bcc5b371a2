"""Chaos under `kapa up --envoy` (issue 11): a steady load through Envoy while, in turn, a replica's app, a
replica's queue-proxy, the activator, the scaler and Prometheus are SIGKILLed. One stack, one load, the parts
killed one after the other, each once everything is steady again; with -s the run ends with a table.

The load: CONCURRENCY closed-loop clients at sleep=SLEEP_MS against target 10 at Knative's default 70 %
utilisation (7 per replica): 20 / 7 = 2.9, so the service needs 3 replicas. Target-burst-capacity 0 keeps the
activator out of the path whenever the service has a ready replica (Envoy "serves" them straight), so it is on
no request's path while it is killed. Windows are shortened as in the other local tests: 10 s stable, 3 s
panic. The load sits well inside its count: a decision of 2 needs a reading under 14 (-30 %), which the one
under-read every replacement brings stays above: a new replica takes its share of requests at once, but
Prometheus discovers it in up to 5 s and rate() needs two of its samples, so for up to 7 s of a 10 s window
one replica in three reads as idle (-23 %). Nearer the edge (25 clients at 100 %: 2.5 of 3) that under-read
alone scales the service down, and then back up, for as long as the load lasts.

What is checked, per part:
- requests failed stay within a bound argued from where a request can be lost (see _bound);
- no decision went below what the load needed, nor to zero: the lowest desired count from the kill to the
  end of its phase (a full stable window after the part was back, so a restarted scaler's first decisions
  out of its restart panic are seen) against the pods the measured load needed (see `needed`);
- the part came back: kapa up restarted it (or the backend replaced the replica) and the data is fresh.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import aiohttp
import pytest

from kapa.core import contract
from kapa.core.contract import knative_annotation
from kapa.tools.load import LoadConfig, LoadResult, run_load
from tests.local.harness import HOST, KapaUp, Sample, hello_services

pytestmark = pytest.mark.slow

CONCURRENCY = 20
SLEEP_MS = 100
#: Per replica: the target annotation at Knative's default utilisation (70 %).
TARGET = 10 * 0.7
NEEDED = 3
WINDOW_S = 10
#: Each client sends this many requests per run of the load (about half a second): failures are placed in time
#: to within one run, and a new run starts as soon as one ends.
ROUNDS_PER_RUN = 5
#: After a part is back, its phase goes on for a stable window and two ticks: every decision whose windows
#: still hold the outage is seen.
OBSERVE_S = WINDOW_S + 4
#: A request spends most of its time at the app (SLEEP_MS) but some outside the queue-proxies, in the client
#: and Envoy, where the scaler does not count it: the pods the load needs are those for this share of the
#: concurrency the clients measure (generous: a millisecond or two of 100 is lost at rest).
SHARE_SEEN_BY_QUEUE_PROXIES = 0.9
ANNOTATIONS = {
    knative_annotation("target"): "10",
    knative_annotation("target-burst-capacity"): "0",
    knative_annotation("window"): f"{WINDOW_S}s",
    knative_annotation("panic-window-percentage"): "30",
}
CONFIG = {"scale-to-zero-grace-period": "6s"}


@dataclass(frozen=True)
class Run:
    """One run of the load: when it began and ended, and what it got."""

    began: float
    ended: float
    result: LoadResult

    @property
    def failed(self) -> int:
        return self.result.errors + sum(count for code, count in self.result.status_counts.items() if code != 200)


@dataclass
class SteadyLoad:
    """The clients, in back-to-back runs of ROUNDS_PER_RUN requests each, until stopped (bounded by a deadline)."""

    url: str
    deadline: float
    runs: list[Run] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def drive(self) -> None:
        config = LoadConfig(f"{self.url}/?sleep={SLEEP_MS}", concurrency=CONCURRENCY,
                            requests=CONCURRENCY * ROUNDS_PER_RUN, headers=(("Host", HOST),), timeout_s=10.0)
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            began = time.monotonic()
            result = await run_load(config, self.stop)
            self.runs.append(Run(began, time.monotonic(), result))

    def between(self, start: float, end: float) -> list[Run]:
        return [run for run in self.runs if run.ended > start and run.began < end]


@dataclass(frozen=True)
class Phase:
    """One part killed: what the load and the scaler did from the kill to the end of the phase."""

    part: str
    killed_at: float
    #: When the part was back: restarted or replaced, and the scaler's data fresh again (the last time in the
    #: phase it turned fresh after being stale).
    back_at: float
    ended_at: float
    runs: tuple[Run, ...]
    samples: tuple[Sample, ...]
    #: The scaler's own account of its last decisions at the end of the phase (kapa explain), for evidence.
    decisions: tuple[str, ...]

    @property
    def failed(self) -> int:
        return sum(run.failed for run in self.runs)

    @property
    def load_normal_after_s(self) -> float:
        """From the kill to the end of the last run that had a failure (0 if none had)."""
        failing = [run.ended for run in self.runs if run.failed]
        return max(failing) - self.killed_at if failing else 0.0

    @property
    def concurrency(self) -> float:
        """The clients' mean concurrency over the phase (Little's law: request-seconds over seconds)."""
        busy = sum(sum(run.result.latencies_s) for run in self.runs)
        return busy / sum(run.ended - run.began for run in self.runs)

    @property
    def needed(self) -> int:
        """The replicas the load needed: ceil(concurrency the queue-proxies could see / target)."""
        return math.ceil(SHARE_SEEN_BY_QUEUE_PROXIES * self.concurrency / TARGET - 1e-9)

    @property
    def lowest_desired(self) -> int:
        return min(sample.desired for sample in self.samples)

    def timeline(self) -> str:
        """What kapa up printed from the kill on, then the scaler's last decisions with what it read."""
        printed = [f"  +{s.at - self.killed_at:5.1f}s desired={s.desired} ready={s.ready} panic={s.panic_mode} "
                   f"stale={s.stale} mode={s.mode} failures={s.failures}" for s in self.samples]
        return "\n".join(["kapa up, after the kill:", *printed, "the scaler's last decisions:", *self.decisions])


def _bound(part: str) -> int:
    """The most requests killing `part` may cost, from where a request can be lost.

    - A replica's queue-proxy: only requests Envoy had sent on a connection to it. Each such connection
      carries one request at a time and Envoy opened no more of them than it had requests for the replica
      at once (at most CONCURRENCY, its share is a third of that); a new connection is refused, and Envoy
      retries that on another replica (connect-failure).
    - A replica's app: the requests it held (its share of the CONCURRENCY in flight) get 502 from its
      queue-proxy, and so does whatever Envoy sends the queue-proxy until the endpoint update reaches it,
      which kapa up sends the moment it reaps the app. CONCURRENCY leaves room for twice the share again.
    - The activator, the scaler, Prometheus: none is on a request's path in serve mode: no request may fail.
    """
    return CONCURRENCY if part in ("app", "queue-proxy") else 0


#: Part name -> a command-line fragment that finds its process below kapa up.
KILLED = {
    "app": "sample-app",
    "queue-proxy": "-m queue_proxy",
    "activator": "-m activator",
    "scaler": "-m kapa.local.scaler_process",
    "prometheus": "prometheus --config.file",
}


def _restarted(up: KapaUp, part: str) -> bool:
    return any(name == part for _, name, _ in up.restarts)


async def _steady(up: KapaUp, needed: int, timeout_s: float) -> None:
    """Enough ready replicas, fresh data, Envoy serving them straight, and out of panic (in panic the count
    never goes down, which would hide a scale-down the next kill causes)."""
    def steady() -> bool:
        latest = up.latest
        return (latest is not None and latest.ready == latest.desired >= needed and not latest.stale
                and not latest.panic_mode and latest.mode == contract.MODE_SERVE)
    await up.wait_for(steady, timeout_s, f"{needed}+ ready replicas, fresh data, serving, out of panic")


async def _decisions(up: KapaUp, killed_wall: float) -> tuple[str, ...]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(up.explain_url) as response:
            decisions = (await response.json())["decisions"]
    return tuple(f"  +{d['at'] - killed_wall:5.1f}s desired={d['desired_pods']} ready={d['ready_pods']} "
                 f"stable={d['stable_value']} panic={d['panic_value']} panic_mode={d['panic_mode']} "
                 f"stale={d['stale']}" for d in reversed(decisions))


async def _phase(up: KapaUp, load: SteadyLoad, part: str) -> Phase:
    assert up.latest is not None
    failures_before = up.latest.failures
    pid = up.processes(KILLED[part])[0]
    killed_at, killed_wall = time.monotonic(), time.time()
    os.kill(pid, signal.SIGKILL)
    back: Callable[[], bool]
    if part in ("app", "queue-proxy"):  # the backend replaces the replica
        def back() -> bool:
            latest = up.latest
            return latest is not None and latest.failures > failures_before and latest.ready == latest.desired
    else:  # kapa up starts the part again; the scaler and Prometheus are back when the data is fresh
        def back() -> bool:
            return _restarted(up, part) and bool(up.latest and not up.latest.stale)
    await up.wait_for(back, 60, f"{part} back after SIGKILL")
    back_at = time.monotonic()
    await asyncio.sleep(OBSERVE_S)
    ended_at = time.monotonic()
    samples = tuple(s for s in up.since(killed_at) if s.at <= ended_at)
    fresh_again = [after.at for before, after in pairwise(samples) if before.stale and not after.stale]
    return Phase(part, killed_at, max([back_at, *fresh_again]), ended_at, tuple(load.between(killed_at, ended_at)),
                 samples, await _decisions(up, killed_wall))


async def _chaos(workdir: Path) -> tuple[list[Phase], KapaUp]:
    up = await KapaUp.start(workdir, hello_services(ANNOTATIONS), CONFIG, extra_args=("--envoy",))
    load = SteadyLoad(up.entry_url, deadline=time.monotonic() + 240)
    driving: asyncio.Task[None] | None = None
    phases: list[Phase] = []
    try:
        await up.wait_fresh(1)
        driving = asyncio.create_task(load.drive())
        for part in KILLED:
            await _steady(up, NEEDED, 45)
            phases.append(await _phase(up, load, part))
        await _steady(up, NEEDED, 45)
        load.stop.set()
        await driving
        await up.stop()
    finally:
        load.stop.set()
        if driving is not None:
            await asyncio.gather(driving, return_exceptions=True)
        if up.process.returncode is None:
            await up.stop(check=False)
    return phases, up


@dataclass(frozen=True)
class Chaos:
    phases: dict[str, Phase]
    up: KapaUp


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    """The one run every test of this module reads (a stack per test would take minutes each)."""
    phases, up = asyncio.run(_chaos(tmp_path_factory.mktemp("chaos")))
    print(f"\nchaos under kapa up --envoy, -c {CONCURRENCY} sleep={SLEEP_MS}ms, target {TARGET:g} per replica:")
    print(f"{'part killed':<12} {'failed':>6} {'bound':>5} {'back s':>6} {'load ok s':>9} "
          f"{'lowest desired':>14} {'needed':>6} {'conc.':>5}")
    for phase in phases:
        print(f"{phase.part:<12} {phase.failed:>6} {_bound(phase.part):>5} {phase.back_at - phase.killed_at:>6.1f} "
              f"{phase.load_normal_after_s:>9.1f} {phase.lowest_desired:>14} {phase.needed:>6} "
              f"{phase.concurrency:>5.1f}")
    yield Chaos({phase.part: phase for phase in phases}, up)


@pytest.mark.parametrize("part", list(KILLED))
def test_failed_requests_stay_within_their_bound(chaos: Chaos, part: str) -> None:
    phase = chaos.phases[part]
    failures = [run.result.summary() for run in phase.runs if run.failed]
    assert phase.failed <= _bound(part), failures


#: Open, for scaler/ (issue 11): what Prometheus's restart does to the scaler's windows.
PROMETHEUS_GAP = (
    "open: after Prometheus is killed under load and restarted (in about 1 s, but it scrapes again only after "
    "its 5 s discovery batch), each series has a scrape gap of about 7 s. Fresh answers come back before the "
    "gap has left the 10 s stable window, and rate() over a window whose first samples are missing "
    "extrapolates only half a scrape interval into the gap, so the window reads as if the gap had no load: "
    "stable 19.1 before the kill, then 19.0, 15.1, 11.1 (load steady at 19.8) and the scaler scales the loaded "
    "service 3 -> 2 about 11 s after the kill, back to 3 two seconds later. A missing sample reads as less "
    "load; never as zero (a series with fewer than two samples is no data, and no data holds)."
)


@pytest.mark.parametrize("part", [pytest.param(part, marks=pytest.mark.xfail(strict=False, reason=PROMETHEUS_GAP))
                                  if part == "prometheus" else part for part in KILLED])
def test_no_decision_below_what_the_load_needed(chaos: Chaos, part: str) -> None:
    phase = chaos.phases[part]
    assert phase.lowest_desired >= max(1, phase.needed), phase.timeline()


def test_every_part_came_back(chaos: Chaos) -> None:
    """Each kept part was started again exactly once, each killed replica was replaced, and at the end the
    service was at its replicas with fresh data (_chaos waited for it before stopping kapa up)."""
    restarted = sorted((name, count) for _, name, count in chaos.up.restarts)
    assert restarted == [("activator", 1), ("prometheus", 1), ("scaler", 1)], restarted
    assert chaos.up.samples[-1].failures == 2
