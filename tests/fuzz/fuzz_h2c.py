"""Fuzz the h2c frame stream: `python -m tests.fuzz.fuzz_h2c [libFuzzer flags]` (see tests/fuzz/README.md).

Inputs are frames only: the harness puts the connection preface before the first chunk, so every input
reaches the frame relay."""

from __future__ import annotations

from tests.fuzz.entry import main

if __name__ == "__main__":
    main("h2c")
