"""Coverage-guided fuzzing of the relay (see README.md). Nothing here imports kapa.relay: the fuzzers
instrument it as they import it first."""

from pathlib import Path

#: The committed seed corpus, a directory per fuzzer (harness.TARGETS).
CORPUS = Path(__file__).parent / "corpus"
