"""Mutation testing (mutmut) of the modules where a silent bug costs most, each against its fast unit tests.

A mutant is the code with one small change (`<` for `<=`, `-=` for `+=`, a value made None); a test suite
that still passes on it cannot tell the change from the code. Each target below is mutated and run against
the unit tests that cover it (never the slow integration tests: mutmut forks one process per mutant and
runs only the tests that call the mutated function). Every mutant that survives must be killed by a
sharper test or listed in docs/mutation.md as equivalent, with why.

    make mutation                          # every target, about seven minutes on two cores
    .venv/bin/python -m tests.mutation scaler.decision queue_proxy.limiter   # some targets

The whole set is run by hand (it takes minutes); CI runs `SAMPLE`, every mutant of six small functions (about
80), as tests/test_mutation_sample.py (well under two minutes). Each run works in a copy of the tree
(build/mutation/<target>, kept for `mutmut show NAME` / `mutmut browse` there), with one worker, since the
machine's cores are shared.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EQUIVALENT_DOC = REPO / "docs" / "mutation.md"
#: The packages copied into a run's tree: mutmut puts its mutated copy first on sys.path, and a package it
#: does not hold would be imported from the work tree instead (the editable install).
PACKAGES = ("kapa", "scaler", "queue_proxy", "activator", "gateway")
#: Statuses that mean a test noticed the mutant (a hang past --timeout is noticed too).
DETECTED = frozenset(("killed", "timeout"))
#: Wall-clock bound on one test under a mutant (a mutant can make an await wait forever, which mutmut's
#: CPU-time limit never sees), and on one mutmut run.
TEST_TIMEOUT_S = 10
RUN_TIMEOUT_S = 1800
_MUTANT_NAME = re.compile(r"`([\w.\u01c1]+__mutmut_\d+)`")


@dataclass(frozen=True)
class Target:
    """One module, the mutant names (globs after `module.`) in scope, and the unit tests that cover it."""

    module: str
    tests: tuple[str, ...]
    scope: tuple[str, ...] = ("*",)

    @property
    def source(self) -> str:
        """The module's file, relative to the repository."""
        return self.module.replace(".", "/") + ".py"

    def globs(self) -> tuple[str, ...]:
        """The mutant names in scope, as mutmut matches them."""
        return tuple(f"{self.module}.{pattern}" for pattern in self.scope)


TARGETS = (
    Target("scaler.decision", ("tests/scaler/test_decision.py", "tests/scaler/test_decision_exact.py")),
    Target("kapa.core.settings", ("tests/kapa/core/test_settings.py",)),
    Target("queue_proxy.limiter", ("tests/queue_proxy/test_limiter.py",)),
    Target("queue_proxy.stats", ("tests/queue_proxy/test_stats.py",)),
    # Where the queue-proxy's relay handler counts exchanges and streams into RequestStats (the rest of the
    # handler is forwarding and timeouts, tested end to end).
    Target(
        "queue_proxy.handler",
        ("tests/queue_proxy/test_handler_accounting.py",),
        tuple(
            f"x\u01c1QueueProxyHandler\u01c1{method}*"
            for method in ("request_received", "request_finished", "malformed_request", "stream_opened", "stream_closed")
        ),
    ),
    Target("activator.throttler", ("tests/activator/test_throttler.py",)),
    Target("activator.lb_policy", ("tests/activator/test_lb_policy.py",)),
)
TARGETS_BY_MODULE = {target.module: target for target in TARGETS}

#: The CI sample: whole small functions where an off-by-one or a swapped branch is silent elsewhere (the
#: limiter's FIFO hand-over, the integral, where the handler counts an exchange's end, round robin, the
#: throttler's dispatch, the scale-down-delay window), chosen among those few tests reach, so that each
#: mutant runs in a fraction of a second. (The config parser is left to the whole set: nearly every one of
#: its functions is reached by every config test.)
SAMPLE = (
    "queue_proxy.limiter.x\u01c1ConcurrencyLimiter\u01c1release*",
    "queue_proxy.stats.x\u01c1RequestStats\u01c1started*",
    "queue_proxy.handler.x\u01c1QueueProxyHandler\u01c1request_finished*",
    "activator.lb_policy.x\u01c1RoundRobin\u01c1__call__*",
    "activator.throttler.x\u01c1Throttler\u01c1_dispatch*",
    "scaler.decision.x__record_delay*",
)


@dataclass(frozen=True)
class Outcome:
    """Each mutant in scope and its mutmut status (killed, survived, no tests, timeout, ...)."""

    status_by_mutant: dict[str, str]

    @property
    def detected(self) -> int:
        return sum(status in DETECTED for status in self.status_by_mutant.values())

    def undetected(self) -> list[str]:
        return sorted(name for name, status in self.status_by_mutant.items() if status not in DETECTED)

    def rate(self) -> str:
        total = len(self.status_by_mutant)
        return f"{self.detected}/{total} ({100.0 * self.detected / total:.0f}%)" if total else "no mutants"


def equivalent_mutants(doc: Path = EQUIVALENT_DOC) -> set[str]:
    """The mutant names docs/mutation.md lists as equivalent (each in backticks)."""
    return set(_MUTANT_NAME.findall(doc.read_text(encoding="utf-8"))) if doc.exists() else set()


def mutate(targets: Sequence[Target], globs: Sequence[str], workdir: Path) -> Outcome:
    """Run mutmut over `targets` (their sources, against their tests) for the mutants matching `globs`, in a
    fresh copy of the tree at `workdir`, with one worker; the status of every mutant in scope. mutmut's
    output goes to `workdir`/mutmut.log."""
    _prepare(targets, workdir)
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", *globs]
    log = workdir / "mutmut.log"
    with open(log, "wb") as output:
        finished = subprocess.run(command, cwd=workdir, stdout=output, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S)
    if finished.returncode != 0:
        raise RuntimeError(f"mutmut run failed ({finished.returncode}); see {log}")
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=workdir, capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    statuses: dict[str, str] = {}
    for line in listing.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and any(fnmatch.fnmatchcase(name, glob) for glob in globs):
            statuses[name] = status
    if not statuses:
        raise RuntimeError(f"no mutant matched {list(globs)}; see {log}")
    return Outcome(statuses)


def _prepare(targets: Sequence[Target], workdir: Path) -> None:
    """A fresh copy of the packages and tests, with the repository's pyproject.toml plus a [tool.mutmut]
    table for `targets` (mutmut reads its configuration from the working directory only)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "build", "corpus")
    for package in (*PACKAGES, "tests"):
        shutil.copytree(REPO / package, workdir / package, ignore=skip)
    tests = sorted({test for target in targets for test in target.tests})
    table = "\n".join(
        (
            "",
            "[tool.mutmut]",
            f"source_paths = {_toml_list(PACKAGES)}",
            f"only_mutate = {_toml_list(target.source for target in targets)}",
            f'pytest_add_cli_args = ["-p", "no:cacheprovider", "--timeout", "{TEST_TIMEOUT_S}"]',
            f"pytest_add_cli_args_test_selection = {_toml_list(tests)}",
            "",
        )
    )
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    (workdir / "pyproject.toml").write_text(pyproject + table, encoding="utf-8")


def _toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the targets named (all by default), print each one's kill rate and every mutant no test detected;
    1 when one of those is not listed in docs/mutation.md as equivalent."""
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"targets (default: all): {', '.join(TARGETS_BY_MODULE)}")
    modules = parser.parse_args(argv).modules or list(TARGETS_BY_MODULE)
    unknown = sorted(set(modules) - set(TARGETS_BY_MODULE))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS_BY_MODULE)}")
    equivalent = equivalent_mutants()
    unexplained: list[str] = []
    for module in modules:
        target = TARGETS_BY_MODULE[module]
        outcome = mutate([target], target.globs(), REPO / "build" / "mutation" / module)
        print(f"{module}: {outcome.rate()} detected", flush=True)
        for name in outcome.undetected():
            known = name in equivalent
            print(f"    {outcome.status_by_mutant[name]}{' (equivalent, docs/mutation.md)' if known else ''}: {name}")
            if not known:
                unexplained.append(name)
    if unexplained:
        print(f"{len(unexplained)} mutants survived that no test kills and docs/mutation.md does not explain")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
