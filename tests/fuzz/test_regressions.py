"""Every input the fuzzers found breaking a promise (tests/fuzz/findings.py), replayed through the harness
that found it. An open finding's bug is being fixed elsewhere: its replay is xfail(strict=True), and passes
(so fails here, as XPASS) once the fix lands, which is the moment to mark the finding fixed."""

from __future__ import annotations

import re

import pytest

from tests.fuzz.findings import FINDINGS, Finding
from tests.fuzz.harness import Harness


@pytest.mark.parametrize(
    "finding",
    [
        pytest.param(
            finding, id=finding.name,
            marks=[pytest.mark.xfail(strict=True, reason=finding.bug_class)] if finding.open else [],
        )
        for finding in FINDINGS
    ],
)
def test_the_input_keeps_every_promise(harness: Harness, finding: Finding) -> None:
    harness.run(finding.input, finding.target)


def test_the_signature_names_what_the_harness_reports(harness: Harness) -> None:
    """A bounded fuzzing run tells an open class apart by its signature: each open finding's must match the
    report its input gives (a fixed one has no report to match, so only its signature's syntax is checked)."""
    for finding in FINDINGS:
        re.compile(finding.signature)
        if not finding.open:
            continue
        with pytest.raises(Exception) as raised:
            harness.run(finding.input, finding.target)
        assert finding.matches(f"{raised.type.__name__}: {raised.value}"), finding.name
