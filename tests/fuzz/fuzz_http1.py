"""Fuzz the HTTP/1 relay: `python -m tests.fuzz.fuzz_http1 [libFuzzer flags]` (see tests/fuzz/README.md).

Inputs are the client's raw bytes (after the behaviour bytes), so the fuzzer reaches every path the
relay's HTTP/1 side has, the sniffing of an h2c preface and both upgrades included."""

from __future__ import annotations

from tests.fuzz.entry import main

if __name__ == "__main__":
    main("http1")
