"""The fuzzers in the test suite: every seed replayed (and some checked to reach what they are named for), and
a short coverage-guided run of each fuzzer.

The run is bounded by time (RUN_S, on a busy 2-core machine a few thousand inputs) and starts from the
committed seeds; its new inputs go to a temporary directory, never into the repository. A crash of an open
class (tests/fuzz/findings.py: a bug being fixed elsewhere) is an expected failure that shows the input; any
other fails the test with the input, the harness's report and how to replay it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuzz import CORPUS
from tests.fuzz.findings import open_finding
from tests.fuzz.harness import TARGETS, Harness, Outcome
from tests.support import REPO

#: Seconds of fuzzing per fuzzer.
RUN_S = 20
#: Files libFuzzer writes for an input that crashed, hung (-timeout) or outgrew -rss_limit_mb.
_ARTIFACTS = ("crash-*", "timeout-*", "oom-*", "leak-*")


@pytest.mark.parametrize(
    "seed", sorted(CORPUS.glob("*/*.bin")), ids=lambda seed: f"{seed.parent.name}/{seed.stem}"
)
def test_every_seed_keeps_every_promise(harness: Harness, seed: Path) -> None:
    harness.run(seed.read_bytes(), seed.parent.name)


def _statuses(outcome: Outcome) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", outcome.responses)]


_GOAWAY_HEAD = b"\x00\x00\x08\x07"  # a GOAWAY frame's length (8) and type

#: Seeds, and what each must reach: a harness that delivered nothing would break no promise either.
_REACHES: dict[str, Callable[[Outcome], bool]] = {
    "http1/pipelined_past_the_queue_bound": lambda outcome: _statuses(outcome) == [200] * 70,
    "http1/websocket_accepted": lambda outcome: _statuses(outcome) == [101],
    "http1/websocket_declined_smuggles": lambda outcome: outcome.app.requests == [(b"GET", b"/ws")],
    "http1/connect_accepted": lambda outcome: b" 200 Connection Established" in outcome.responses,
    "http1/duplicate_host": lambda outcome: outcome.malformed == [400] and outcome.requests == 0,
    "http1/http10_chunked_refused": lambda outcome: outcome.malformed == [400],
    "http1/bad_chunk_after_head": lambda outcome: _statuses(outcome) == [400] and outcome.requests == 1,
    "http1/head_timeout": lambda outcome: outcome.malformed == [408],
    "http1/app_drops_then_replay": lambda outcome: _statuses(outcome) == [200] * 3 and len(outcome.app.requests) == 5,
    "http1/app_refuses_some": lambda outcome: _statuses(outcome) == [200, 200, 502],
    "http1/app_malformed_response": lambda outcome: _statuses(outcome) == [200, 200, 502],
    "http1/shutdown_while_busy": lambda outcome: _statuses(outcome) == [200] and outcome.requests == 1,
    "http1/h2c_prior_knowledge": lambda outcome: outcome.app.streams == [1],
    "http1/h2c_upgrade": lambda outcome: _statuses(outcome) == [101] and outcome.app.streams == [3],
    "h2c/rapid_reset": lambda outcome: len(outcome.app.streams_reset) == 20,
    "h2c/refused_streams_hpack": lambda outcome: outcome.app.streams == [1],
    "h2c/idle_connection": lambda outcome: _GOAWAY_HEAD in outcome.responses,
    "h2c/cancelled_streams": lambda outcome: outcome.app.streams_reset == {1},
    "h2c/read_hold_forward": lambda outcome: outcome.app.streams == [1],
}


@pytest.mark.parametrize("seed", sorted(_REACHES))
def test_the_seeds_reach_what_they_are_named_for(harness: Harness, seed: str) -> None:
    target, name = seed.split("/")
    outcome = harness.run((CORPUS / target / f"{name}.bin").read_bytes(), target)
    assert _REACHES[seed](outcome), f"{outcome.case}\nthe client received {outcome.responses!r}\napp: {outcome.app}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_bounded_fuzzing_run_breaks_no_promise(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [
        sys.executable, "-m", f"tests.fuzz.fuzz_{target}", str(corpus), str(CORPUS / target),
        f"-artifact_prefix={tmp_path}/", f"-max_total_time={RUN_S}", "-timeout=60", "-print_final_stats=1",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=RUN_S + 240)
    artifacts = sorted(path for pattern in _ARTIFACTS for path in tmp_path.glob(pattern))
    if result.returncode == 0 and not artifacts:
        return
    output = result.stdout + result.stderr
    report = [f"{' '.join(command)}\nexited {result.returncode}"]
    for artifact in artifacts:
        report.append(f"input {artifact.name}: {artifact.read_bytes()!r}")
        report.append(
            f"replay: .venv/bin/python -m tests.fuzz.fuzz_{target} {artifact}  (or Harness().run(input, {target!r}))"
        )
    report.append(output[-6000:])
    known = open_finding(output)
    if artifacts and known:
        pytest.xfail(f"found the open class of {known.name}, input {artifacts[0].read_bytes()[:300]!r}")
    pytest.fail("\n".join(report))
