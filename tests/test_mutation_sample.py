"""CI's share of the mutation testing: every mutant of a fixed sample of functions (tests.mutation.SAMPLE) must
be killed by the unit tests. The whole set takes minutes and is run by hand (`make mutation`); this sample,
one mutmut run in a scratch copy of the tree with one worker, takes well under two minutes on 2 cores."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from tests.mutation import SAMPLE, TARGETS, equivalent_mutants, mutate


def test_every_sampled_mutant_is_killed(tmp_path: Path) -> None:
    targets = [target for target in TARGETS if any(fnmatch.fnmatchcase(pattern, f"{target.module}.*") for pattern in SAMPLE)]
    outcome = mutate(targets, SAMPLE, tmp_path / "mutation")
    assert len(outcome.status_by_mutant) >= 50, outcome.status_by_mutant  # the sample still names what it meant to
    survivors = {
        name: outcome.status_by_mutant[name] for name in outcome.undetected() if name not in equivalent_mutants()
    }
    assert survivors == {}, f"see `mutmut show NAME` in {tmp_path / 'mutation'} and docs/mutation.md"
