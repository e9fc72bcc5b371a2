"""The command line of both fuzzers: atheris (libFuzzer) driving `Harness.run`, with coverage from the
relay's own code (kapa.relay, instrumented as it is imported).

Arguments are libFuzzer's and atheris's (`-atheris_runs=N`, `-max_total_time=S`, `-max_len=N`, corpus
directories, crash files to replay). Without a corpus directory the fuzzer grows build/fuzz/<target>/corpus
(git ignores build/) from the committed seeds, and writes crash files beside it, never into the repository.
KAPA_FUZZ_TRACEMALLOC=0 leaves out the tracemalloc peak check, for about four times the inputs a second.
KAPA_FUZZ_SKIP_OPEN=1 goes on past inputs that break a promise the way an open finding does (a bug being
fixed elsewhere, see findings.py), so that a long run finds the next class instead of the known one again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

from tests.fuzz import CORPUS

REPO = Path(__file__).resolve().parents[2]
#: Longest input the fuzzer makes unless told otherwise: room for 64+ pipelined requests, small enough
#: for thousands of inputs a second.
DEFAULT_MAX_LEN = 4096


def fuzzer_arguments(argv: list[str], target: str) -> list[str]:
    """`argv` with the defaults above filled in: the working corpus and the seeds when no input is named,
    crash files under build/fuzz/<target>/, DEFAULT_MAX_LEN."""
    work = REPO / "build" / "fuzz" / target
    arguments = list(argv)
    if not any(not argument.startswith("-") for argument in arguments[1:]):
        (work / "corpus").mkdir(parents=True, exist_ok=True)
        arguments += [str(work / "corpus"), str(CORPUS / target)]
    if not any(argument.startswith("-artifact_prefix=") for argument in arguments):
        work.mkdir(parents=True, exist_ok=True)
        arguments.append(f"-artifact_prefix={work}/")
    if not any(argument.startswith("-max_len=") for argument in arguments):
        arguments.append(f"-max_len={DEFAULT_MAX_LEN}")
    return arguments


def main(target: str) -> None:
    """Fuzz the relay with the inputs of `target` (see `Harness.run`); every invariant violation or exception
    is a crash (libFuzzer writes the input to a crash-<sha1> file and stops). Nothing may import kapa.relay
    before this: it would escape instrumentation."""
    with atheris.instrument_imports(include=["kapa.relay"]):
        from tests.fuzz.harness import Harness
    from tests.fuzz.findings import open_finding

    harness = Harness(trace_memory=os.environ.get("KAPA_FUZZ_TRACEMALLOC", "1") != "0")
    skip_open = os.environ.get("KAPA_FUZZ_SKIP_OPEN") == "1"

    def one_input(data: bytes) -> None:
        try:
            harness.run(data, target)
        except Exception as error:
            if not (skip_open and open_finding(f"{type(error).__name__}: {error}")):
                raise

    atheris.Setup(fuzzer_arguments(sys.argv, target), one_input)
    atheris.Fuzz()
