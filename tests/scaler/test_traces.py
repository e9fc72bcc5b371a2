"""Traces: reading and writing the CSV formats, and the seeded generator's shapes."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from scaler.traces import (
    SHAPES,
    ArrivalTrace,
    ConcurrencyTrace,
    TraceError,
    generate,
    load_trace,
    write_arrivals,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- reading and writing -----------------------------------------------------------------------------------


def test_load_concurrency_trace_fills_gaps_with_zero(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path / "c.csv", "time_s,concurrency\n0,1\n1,2.5\n4,3\n"))
    assert trace == ConcurrencyTrace((1.0, 2.5, 0.0, 0.0, 3.0))


def test_load_arrival_trace_sorts_arrivals(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path / "a.csv", "time_s,duration_s\n2.0,0.5\n1.0,1.5\n\n"))
    assert trace == ArrivalTrace(((1.0, 1.5), (2.0, 0.5)))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("time,load\n0,1\n", "header must be", id="unknown-header"),
        pytest.param("time_s,concurrency\n0,1\n1,lots\n", ":3: not numbers", id="not-a-number-names-the-line"),
        pytest.param("time_s,duration_s\n0,-1\n", ":2: values must be finite and non-negative", id="negative"),
        pytest.param("time_s,duration_s\n0,1,2\n", ":2: expected 2 columns", id="extra-column"),
        pytest.param("time_s,duration_s\n", "no rows", id="header-only"),
        pytest.param("", "empty trace", id="empty"),
    ],
)
def test_malformed_traces_are_rejected_with_the_place(tmp_path: Path, content: str, problem: str) -> None:
    with pytest.raises(TraceError, match=problem):
        load_trace(write(tmp_path / "t.csv", content))


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "nope.csv")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_generated_trace_written_and_read_back_is_the_same(tmp_path: Path, shape: str) -> None:
    trace = generate(shape, seed=4, duration_s=1200.0)
    write_arrivals(tmp_path / "t.csv", trace)
    assert (tmp_path / "t.csv").read_text().startswith("time_s,duration_s\n")
    assert load_trace(tmp_path / "t.csv") == trace


# --- the generator ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
def test_generation_is_seeded_sorted_and_within_the_duration(shape: str) -> None:
    trace = generate(shape, seed=7, duration_s=1800.0)
    assert trace == generate(shape, seed=7, duration_s=1800.0)
    assert trace != generate(shape, seed=8, duration_s=1800.0)
    assert trace.requests, "a trace without requests tests nothing"
    assert list(trace.requests) == sorted(trace.requests)
    assert all(0.0 <= time_s < 1800.0 and duration_s > 0.0 for time_s, duration_s in trace.requests)


def silences_between_requests(trace: ArrivalTrace) -> list[float]:
    """Time from the end of everything in flight to the next arrival, for each arrival that found none."""
    silences, busy_until = [], None
    for time_s, duration_s in trace.requests:
        if busy_until is not None and time_s > busy_until:
            silences.append(time_s - busy_until)
        busy_until = max(busy_until or 0.0, time_s + duration_s)
    return silences


@pytest.mark.parametrize(
    ("shape", "long_silences", "median_long_silence_s", "requests_per_second"),
    [
        # A job every 5 min: 12 runs in an hour, 11 silences of 5 min less the batch (10 s + service).
        pytest.param("periodic", (11, 11), (280.0, 295.0), (0.08, 0.22), id="periodic-every-5-min"),
        # Bursts ~3 min of silence apart (lognormal), each 5-60 s long.
        pytest.param("bursty", (10, 20), (130.0, 240.0), (0.3, 2.5), id="bursty-minutes-apart"),
        # 1-3 requests ~6 min apart.
        pytest.param("sparse", (6, 13), (180.0, 540.0), (0.003, 0.02), id="sparse-minutes-apart"),
        # Never silent for a minute: 5 requests/s.
        pytest.param("steady", (0, 0), None, (4.7, 5.3), id="steady-5-per-second"),
    ],
)
def test_shapes_have_their_documented_silences_and_rates(
    shape: str,
    long_silences: tuple[int, int],
    median_long_silence_s: tuple[float, float] | None,
    requests_per_second: tuple[float, float],
) -> None:
    trace = generate(shape, seed=1, duration_s=3600.0)
    long = [silence for silence in silences_between_requests(trace) if silence > 60.0]
    assert long_silences[0] <= len(long) <= long_silences[1]
    if median_long_silence_s is not None:
        assert median_long_silence_s[0] <= statistics.median(long) <= median_long_silence_s[1]
    assert requests_per_second[0] <= len(trace.requests) / 3600.0 <= requests_per_second[1]


def test_diurnal_is_quiet_at_both_ends_and_busy_in_the_middle() -> None:
    trace = generate("diurnal", seed=1, duration_s=3600.0)
    per_tenth = [0] * 10
    for time_s, _ in trace.requests:
        per_tenth[int(time_s // 360)] += 1
    assert per_tenth[4] > 10 * per_tenth[0] and per_tenth[5] > 10 * per_tenth[9]


@pytest.mark.parametrize(
    ("shape", "duration_s", "message"),
    [("weekly", 60.0, "unknown trace shape 'weekly'"), ("steady", 0.0, "positive duration")],
)
def test_bad_generator_arguments(shape: str, duration_s: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(shape, seed=1, duration_s=duration_s)
