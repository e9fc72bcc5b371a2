"""Traces for `kapa simulate`: reading them, writing them, and generating seeded synthetic ones.

Two kinds of trace, told apart by their CSV header:

* `time_s,concurrency` -- the observed total concurrency during each second;
* `time_s,duration_s` -- one row per request arrival with its service time (the format of
  `examples/traces/azure-llm-2023-conv-arrivals.csv`).

`generate(shape, seed, duration_s)` makes an arrival trace of one of SHAPES, the load patterns a scaling
policy must handle. The same shape and seed always give the same trace (Python's `random.Random`), so a
figure printed from one can be reproduced:

* `periodic` -- a scheduled job: every 5 min (first run at a random offset, each within ±2 s of its time) a
  batch of 20-40 requests spread over 10 s, each taking ~0.5 s (lognormal, σ 0.5).
* `bursty` -- bursts of 5-60 s at 1-10 requests/s (Poisson), separated by silences of ~3 min (lognormal
  median 3 min, σ 0.5: 5 % are shorter than 80 s); each request ~0.5 s.
* `sparse` -- a client that calls now and then: 1-3 requests a second apart, separated by silences of ~6 min
  (lognormal median 6 min, σ 0.5); each ~0.3 s.
* `diurnal` -- one day squeezed into the trace: Poisson arrivals at 0.01 + 4·sin²(π·t/duration)
  requests/s (near silent at both ends, 4/s in the middle); each ~1 s.
* `steady` -- Poisson arrivals at 5 requests/s; each ~2 s (about 10 in flight).

    kapa simulate --generate bursty --seed 3 --save-trace bursty-3.csv --compare
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONCURRENCY_COLUMNS = ("time_s", "concurrency")
ARRIVAL_COLUMNS = ("time_s", "duration_s")
#: How long a generated trace lasts unless asked otherwise: long enough for bursts minutes apart to recur.
DEFAULT_GENERATED_DURATION_S = 3600.0


class TraceError(ValueError):
    """The trace file cannot be replayed; the message says where and why."""


@dataclass(frozen=True)
class ConcurrencyTrace:
    """Observed total concurrency per second (index = second)."""

    concurrency: tuple[float, ...]


@dataclass(frozen=True)
class ArrivalTrace:
    """Request arrivals as (arrival time s, service time s), sorted by arrival."""

    requests: tuple[tuple[float, float], ...]


Trace = ConcurrencyTrace | ArrivalTrace


def load_trace(path: str | Path) -> Trace:
    """Read a trace CSV; raises TraceError naming the line of any malformed row."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise TraceError(f"cannot read trace {path}: {error}") from None
    if not rows:
        raise TraceError(f"{path}: empty trace")
    header = tuple(cell.strip() for cell in rows[0])
    if header not in (CONCURRENCY_COLUMNS, ARRIVAL_COLUMNS):
        raise TraceError(
            f"{path}: header must be {','.join(CONCURRENCY_COLUMNS)} or {','.join(ARRIVAL_COLUMNS)},"
            f" got {','.join(header)}"
        )
    pairs: list[tuple[float, float]] = []
    for line_number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise TraceError(f"{path}:{line_number}: expected 2 columns, got {len(row)}")
        try:
            time_s, value = float(row[0]), float(row[1])
        except ValueError:
            raise TraceError(f"{path}:{line_number}: not numbers: {','.join(row)}") from None
        if not (math.isfinite(time_s) and math.isfinite(value)) or time_s < 0 or value < 0:
            raise TraceError(f"{path}:{line_number}: values must be finite and non-negative: {','.join(row)}")
        pairs.append((time_s, value))
    if not pairs:
        raise TraceError(f"{path}: no rows after the header")
    if header == ARRIVAL_COLUMNS:
        return ArrivalTrace(tuple(sorted(pairs)))
    seconds = [0.0] * (int(max(time_s for time_s, _ in pairs)) + 1)
    for time_s, value in pairs:
        seconds[int(time_s)] = value
    return ConcurrencyTrace(tuple(seconds))


def write_arrivals(path: str | Path, trace: ArrivalTrace) -> None:
    """Write an arrival trace as `time_s,duration_s`, millisecond precision (what load_trace reads back)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(ARRIVAL_COLUMNS)
        writer.writerows((f"{time_s:.3f}", f"{duration_s:.3f}") for time_s, duration_s in trace.requests)


def generate(shape: str, seed: int, duration_s: float = DEFAULT_GENERATED_DURATION_S) -> ArrivalTrace:
    """An arrival trace of `shape` (one of SHAPES) lasting `duration_s`, the same for the same seed.

    Times and service times are rounded to the millisecond, as write_arrivals stores them, so a trace
    replayed directly and one saved and loaded again replay identically.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown trace shape {shape!r}: use one of {', '.join(SHAPES)}")
    if not duration_s > 0:
        raise ValueError("a generated trace needs a positive duration")
    rng = random.Random(f"{shape}:{seed}")
    requests = [
        (round(time_s, 3), round(service_s, 3))
        for time_s, service_s in SHAPES[shape](rng, duration_s)
        if 0.0 <= time_s < duration_s
    ]
    return ArrivalTrace(tuple(sorted(requests)))


_Requests = list[tuple[float, float]]


def _service_time(rng: random.Random, median_s: float) -> float:
    return max(0.001, rng.lognormvariate(math.log(median_s), 0.5))


def _periodic(rng: random.Random, duration_s: float) -> _Requests:
    period_s, batch_spread_s = 300.0, 10.0
    requests: _Requests = []
    start = rng.uniform(0.0, period_s)
    while start < duration_s:
        run = start + rng.uniform(-2.0, 2.0)
        requests += [
            (run + rng.uniform(0.0, batch_spread_s), _service_time(rng, 0.5)) for _ in range(rng.randint(20, 40))
        ]
        start += period_s
    return requests


def _poisson(rng: random.Random, start_s: float, end_s: float, rate: float, median_s: float) -> _Requests:
    requests: _Requests = []
    time_s = start_s + rng.expovariate(rate)
    while time_s < end_s:
        requests.append((time_s, _service_time(rng, median_s)))
        time_s += rng.expovariate(rate)
    return requests


def _bursty(rng: random.Random, duration_s: float) -> _Requests:
    requests: _Requests = []
    time_s = rng.uniform(0.0, 60.0)
    while time_s < duration_s:
        burst = _poisson(rng, time_s, time_s + rng.uniform(5.0, 60.0), rng.uniform(1.0, 10.0), 0.5)
        burst = burst or [(time_s, _service_time(rng, 0.5))]
        requests += burst
        # The silence runs from the end of the burst's last request.
        time_s = max(arrival + service for arrival, service in burst) + rng.lognormvariate(math.log(180.0), 0.5)
    return requests


def _sparse(rng: random.Random, duration_s: float) -> _Requests:
    requests: _Requests = []
    time_s = rng.uniform(0.0, 120.0)
    while time_s < duration_s:
        requests += [(time_s + index, _service_time(rng, 0.3)) for index in range(rng.randint(1, 3))]
        time_s = requests[-1][0] + requests[-1][1] + rng.lognormvariate(math.log(360.0), 0.5)
    return requests


def _diurnal(rng: random.Random, duration_s: float) -> _Requests:
    base, peak = 0.01, 4.0
    peak_rate = base + peak
    # A non-homogeneous Poisson process by thinning: candidates at the peak rate, each kept with rate(t)/peak.
    return [
        (time_s, service_s)
        for time_s, service_s in _poisson(rng, 0.0, duration_s, peak_rate, 1.0)
        if rng.random() * peak_rate < base + peak * math.sin(math.pi * time_s / duration_s) ** 2
    ]


def _steady(rng: random.Random, duration_s: float) -> _Requests:
    return _poisson(rng, 0.0, duration_s, 5.0, 2.0)


#: The generated shapes, by name (described in the module's docstring).
SHAPES: dict[str, Callable[[random.Random, float], _Requests]] = {
    "periodic": _periodic,
    "bursty": _bursty,
    "sparse": _sparse,
    "diurnal": _diurnal,
    "steady": _steady,
}
