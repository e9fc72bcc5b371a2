"""`kapa simulate`: replays of small synthetic traces with known outcomes, the shared real trace, the CLI."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from kapa.core.contract import ANNOTATION_CONTAINER_CONCURRENCY, knative_annotation
from kapa.core.services import ServiceKey, ServiceSpec
from kapa.core.settings import AutoscalerConfig, ServiceConfig, service_config
from scaler.simulate import StartupDelay, compare, main, simulate
from scaler.traces import (
    ArrivalTrace,
    ConcurrencyTrace,
    TraceError,
    generate,
    load_trace,
)

SHARED_TRACE = Path(__file__).resolve().parents[2] / "examples" / "traces" / "azure-llm-2023-conv-arrivals.csv"


def make_config(annotations: dict[str, str] | None = None) -> ServiceConfig:
    full = {name if "/" in name else knative_annotation(name): value for name, value in (annotations or {}).items()}
    config, errors = service_config(AutoscalerConfig.default(), ServiceSpec(ServiceKey("sim", "test"), full))
    assert errors == []
    return config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- concurrency traces -------------------------------------------------------------------------------------


def test_steady_load_reaches_ceil_of_load_over_target_and_ready_follows_after_startup_delay() -> None:
    trace = ConcurrencyTrace((70.0,) * 120)
    result = simulate(make_config({"target": "10"}), trace, startup_delay_s=4.0)
    by_time = {record.time_s: record for record in result.ticks}
    assert by_time[100.0].desired == 10 and by_time[100.0].ready == 10
    # The first scale-up to 10 comes from panic at t=2 (70 / 7 per pod against 1 ready); the pods are
    # ready one start-up delay later.
    assert by_time[2.0].desired == 10 and by_time[2.0].panic_mode
    assert by_time[4.0].ready == 1 and by_time[6.0].ready == 10
    assert result.summary["max_replicas"] == 10
    assert result.summary["seconds_in_panic"] > 0


def test_scale_to_zero_after_the_trace_ends() -> None:
    trace = ConcurrencyTrace((30.0,) * 10)
    result = simulate(make_config(), trace)
    first_zero = next(record.time_s for record in result.ticks if record.desired == 0)
    # Last traffic in second 9: the stable window is empty from t=70, then the 30 s grace period.
    assert first_zero == 100.0
    assert all(record.desired == 0 and record.ready == 0 for record in result.ticks if record.time_s >= 100.0)
    assert result.summary["trace_end_s"] == 10.0 and result.summary["duration_s"] == 104.0
    # One pod from t=2 (ready after the 2 s start-up) until it is removed at t=100.
    assert result.summary["pod_seconds"] == pytest.approx(100.0)


def test_load_at_zero_pokes_at_once() -> None:
    trace = ConcurrencyTrace((1.0,) * 2 + (0.0,) * 150 + (5.0,) * 10)
    result = simulate(make_config(), trace)
    # At zero since t=92 (stable window empty at 62, grace 30 s). At t=152 the tick still sees no load;
    # the load of second 152 is held by the activator, whose poke decides at once.
    assert [record.desired for record in result.ticks if record.time_s == 152.0] == [0, 1]
    assert any(record.desired == 0 for record in result.ticks if record.time_s < 152.0)


# --- arrival traces -----------------------------------------------------------------------------------------


def test_first_request_waits_for_the_cold_start() -> None:
    result = simulate(make_config(), ArrivalTrace(((0.5, 1.0),)), startup_delay_s=2.0)
    assert result.summary["requests_waited_for_cold_start"] == 1
    assert result.summary["queueing_delay_p50_s"] == pytest.approx(1.5)  # held from 0.5 until the pod at 2.0


def test_request_after_scale_to_zero_pokes_and_waits_one_startup_delay() -> None:
    result = simulate(make_config(), ArrivalTrace(((0.5, 1.0), (200.5, 1.0))), startup_delay_s=2.0)
    poke = next(record for record in result.ticks if record.time_s == 200.5)
    assert poke.desired == 1 and poke.ready == 0
    assert result.summary["requests_waited_for_cold_start"] == 2
    assert result.summary["queueing_delay_max_s"] == pytest.approx(2.0)
    zero_times = [record.time_s for record in result.ticks if record.desired == 0]
    assert zero_times and zero_times[0] == 94.0  # request ran 2.0-3.0; stable window empty at 64; grace 30 s


def test_full_pods_queue_requests_when_container_concurrency_is_set() -> None:
    config = make_config({ANNOTATION_CONTAINER_CONCURRENCY: "1"})
    result = simulate(config, ArrivalTrace(((1.0, 4.0), (1.0, 4.0))), startup_delay_s=0.0)
    # One pod from t=0; the second request waits until the tick at t=2 asks for 2 pods (ready at once).
    assert result.summary["queueing_delay_p50_s"] == 0.0
    assert result.summary["queueing_delay_p99_s"] == pytest.approx(1.0)
    assert result.summary["requests_waited_for_cold_start"] == 0
    assert result.load[1] == pytest.approx(2.0)  # both requests are in the system during second 1


def test_unlimited_concurrency_never_queues_on_a_ready_pod() -> None:
    requests = tuple((0.1 * i, 3.0) for i in range(50))
    result = simulate(make_config(), ArrivalTrace(requests), startup_delay_s=0.0)
    assert result.summary["queueing_delay_max_s"] == 0.0


def test_weighted_exponential_aggregation_runs_through_the_windows() -> None:
    trace = ConcurrencyTrace((0.0,) * 30 + (70.0,) * 30)
    linear = simulate(make_config({"target": "10"}), trace)
    weighted = simulate(make_config({"target": "10", "metric-aggregation-algorithm": "weightedExponential"}), trace)
    at = {record.time_s: record.stable for record in linear.ticks}
    weighted_at = {record.time_s: record.stable for record in weighted.ticks}
    assert weighted_at[40.0] > at[40.0]  # recent load weighs more than in the plain average


def test_shared_trace_replays_in_seconds() -> None:
    trace = load_trace(SHARED_TRACE)
    assert isinstance(trace, ArrivalTrace) and len(trace.requests) == 19366
    started = time.perf_counter()
    default = simulate(make_config(), trace)
    targeted = simulate(make_config({"target": "10"}), trace)
    elapsed = time.perf_counter() - started
    assert elapsed < 20.0, elapsed
    assert default.summary["requests"] == targeted.summary["requests"] == 19366
    # About 24 requests in flight on average: 1 pod at target 70, several at target 7.
    assert default.summary["max_replicas"] < targeted.summary["max_replicas"]
    assert default.summary["pod_seconds"] < targeted.summary["pod_seconds"]


# --- the command --------------------------------------------------------------------------------------------


def test_cli_writes_ticks_plot_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write(
        tmp_path / "arrivals.csv", "time_s,duration_s\n" + "".join(f"{i * 0.25:.2f},2.0\n" for i in range(200))
    )
    config = write(tmp_path / "autoscaler.yaml", "stable-window: 20s\nscale-to-zero-grace-period: 10s\n")
    out, png = tmp_path / "ticks.csv", tmp_path / "plot.png"
    code = main(
        ["--trace", str(trace), "--annotation", knative_annotation("target") + "=2", "--config", str(config),
         "--startup-delay", "1s", "--tick", "2s", "--out", str(out), "--plot", str(png)]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"] == 200 and summary["target"] == pytest.approx(1.4)
    assert {
        "pod_seconds",
        "max_replicas",
        "seconds_in_panic",
        "scale_events",
        "queueing_delay_p50_s",
        "queueing_delay_p99_s",
        "requests_waited_for_cold_start",
    } <= set(summary)
    lines = out.read_text().splitlines()
    assert lines[0] == "time_s,stable,panic,desired,ready,panic_mode"
    assert len(lines) - 1 == summary["decisions"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 2 requests in flight at target 1.4 need 2 pods; idle after the trace with a 20 s window + 10 s grace.
    assert lines[-1].endswith(",0,0,0")


def test_cli_reports_bad_annotation_values_and_carries_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write(tmp_path / "c.csv", "time_s,concurrency\n0,5\n")
    assert main(["--trace", str(trace), "--annotation", knative_annotation("window") + "=-5s"]) == 0
    captured = capsys.readouterr()
    assert f"key={knative_annotation('window')}" in captured.err and "service=simulate/c" in captured.err
    assert json.loads(captured.out)["decisions"] > 0


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--annotation", "no-equals-sign"], id="annotation-without-value"),
        pytest.param(["--tick", "0s"], id="zero-tick"),
        pytest.param(["--startup-delay", "soon"], id="bad-duration"),
    ],
)
def test_cli_usage_errors(tmp_path: Path, argv: list[str]) -> None:
    trace = write(tmp_path / "c.csv", "time_s,concurrency\n0,5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--trace", str(trace), *argv])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("target", "did you mean 'autoscaling.knative.dev/target'?"),
        ("autoscaling.knative.dev/targt", "did you mean 'autoscaling.knative.dev/target'?"),
        ("foo", "is no autoscaling annotation"),
    ],
)
def test_an_annotation_the_scaler_would_ignore_is_refused_with_the_nearest_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, hint: str
) -> None:
    trace = write(tmp_path / "c.csv", "time_s,concurrency\n0,5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--trace", str(trace), "--annotation", f"{name}=10"])
    assert exit_info.value.code == 2
    assert hint in capsys.readouterr().err


def test_cli_bad_trace_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write(tmp_path / "bad.csv", "when,what\n")
    assert main(["--trace", str(trace)]) == 2
    assert "header must be" in capsys.readouterr().err


def test_rps_metric_observes_arrivals_per_second() -> None:
    requests = tuple((i / 300.0, 0.01) for i in range(300 * 30))  # 300 requests per second for 30 s
    result = simulate(make_config({"metric": "rps"}), ArrivalTrace(requests), startup_delay_s=0.0)
    assert result.load[5] == pytest.approx(300.0, abs=1.0)
    by_time = {record.time_s: record for record in result.ticks}
    assert by_time[20.0].desired == 3  # ceil(300 / (200 × 70 %))


def test_rps_metric_needs_an_arrival_trace() -> None:
    with pytest.raises(TraceError, match="needs an arrival trace"):
        simulate(make_config({"metric": "rps"}), ConcurrencyTrace((1.0,)))


# --- pod start-up -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "median_s", "p99_s"),
    [
        pytest.param("2s", 2.0, 2.0, id="constant"),
        pytest.param("0", 0.0, 0.0, id="instant"),
        pytest.param("lognormal:median=2s,p99=6s", 2.0, 6.0, id="lognormal"),
        pytest.param(" lognormal : p99=1m , median=500ms", 0.5, 60.0, id="any-order-and-spacing"),
    ],
)
def test_startup_delay_forms(text: str, median_s: float, p99_s: float) -> None:
    assert StartupDelay.parse(text) == StartupDelay(median_s, p99_s)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("-1s", "must not be negative", id="negative"),
        pytest.param("gamma:k=2", "unknown start-up distribution 'gamma'", id="unknown-distribution"),
        pytest.param("lognormal:median=2s", "bad start-up distribution", id="p99-missing"),
        pytest.param("lognormal:median=2s,p99=6s,p50=2s", "bad start-up distribution", id="unknown-parameter"),
        pytest.param("lognormal:median=6s,p99=2s", "needs 0 < median <= p99", id="p99-below-median"),
        pytest.param("lognormal:median=2s,p99=soon", "not a duration", id="bad-duration"),
    ],
)
def test_bad_startup_delays(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        StartupDelay.parse(text)


def test_lognormal_startup_has_the_median_and_p99_asked_for() -> None:
    delay = StartupDelay.parse("lognormal:median=2s,p99=6s")
    rng = random.Random(5)
    samples = sorted(delay.sample(rng) for _ in range(20_000))
    assert samples[10_000] == pytest.approx(2.0, rel=0.03)
    assert samples[19_800] == pytest.approx(6.0, rel=0.08)


def test_replays_that_ask_for_a_pod_at_the_same_moment_wait_the_same() -> None:
    """Start-up delays are drawn per (seed, time, pod), so both policies' first cold start waits the same, and
    another seed draws another delay."""
    trace = ArrivalTrace(((0.5, 1.0),))
    delay = StartupDelay.parse("lognormal:median=2s,p99=6s")
    waits = {seed: [run.summary["queueing_delay_max_s"] for run in compare(make_config(), trace, delay, seed=seed).values()]
             for seed in (1, 2)}
    assert waits[1][0] == waits[1][1] and waits[2][0] == waits[2][1]
    assert waits[1][0] != waits[2][0]


# --- comparing policies ---------------------------------------------------------------------------------------


def test_compare_replays_knatives_rules_and_the_predictive_policy() -> None:
    """A job every 5 min for 2 h: Knative keeps a pod ~90 s after each run and cold-starts every run; the
    policy, once it has seen three silences, drops the pod after each run and pre-warms one before the next."""
    trace = generate("periodic", seed=2, duration_s=7200.0)
    runs = compare(make_config(), trace, StartupDelay.parse("lognormal:median=2s,p99=6s"), seed=2)
    assert list(runs) == ["knative", "predictive"]
    knative, predictive = (runs[policy].summary for policy in ("knative", "predictive"))
    assert knative == simulate(make_config(), trace, StartupDelay.parse("lognormal:median=2s,p99=6s"), seed=2).summary
    assert (knative["scaling_policy"], predictive["scaling_policy"]) == ("knative", "predictive")
    assert predictive["pod_seconds"] < 0.6 * knative["pod_seconds"]  # type: ignore[operator]
    assert predictive["requests_waited_for_cold_start"] < 0.5 * knative["requests_waited_for_cold_start"]  # type: ignore[operator]


def test_the_predictive_policy_leaves_a_steady_service_alone() -> None:
    trace = generate("steady", seed=1, duration_s=600.0)
    runs = compare(make_config(), trace)
    assert {key: value for key, value in runs["predictive"].summary.items() if key != "scaling_policy"} == {
        key: value for key, value in runs["knative"].summary.items() if key != "scaling_policy"}


def test_cli_generates_compares_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved, out, png = tmp_path / "periodic.csv", tmp_path / "ticks.csv", tmp_path / "plot.png"
    code = main(["--generate", "periodic", "--seed", "3", "--duration", "30m", "--save-trace", str(saved), "--compare",
                 "--startup-delay", "lognormal:median=2s,p99=6s", "--out", str(out), "--plot", str(png)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trace"] == "--generate periodic --seed 3"
    assert summary["startup_delay"] == "lognormal median 2s, p99 6s"
    assert summary["knative"]["requests"] == summary["predictive"]["requests"] == len(load_trace(saved).requests)
    assert load_trace(saved) == generate("periodic", 3, 1800.0)
    lines = out.read_text().splitlines()
    assert lines[0] == "policy,time_s,stable,panic,desired,ready,panic_mode"
    assert {line.split(",")[0] for line in lines[1:]} == {"knative", "predictive"}
    assert len(lines) - 1 == summary["knative"]["decisions"] + summary["predictive"]["decisions"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_replays_one_policy_from_its_annotation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--generate", "sparse", "--duration", "20m", "--annotation", "kapa.dev/scaling-policy=predictive"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scaling_policy"] == "predictive" and "knative" not in summary


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        pytest.param(["--generate", "steady", "--save-trace"], "expected one argument", id="save-trace-needs-a-path"),
        pytest.param(["--generate", "weekly"], "invalid choice: 'weekly'", id="unknown-shape"),
        pytest.param(["--trace", "x.csv", "--generate", "steady"], "not allowed with argument", id="trace-or-generate"),
        pytest.param([], "one of the arguments --trace --generate is required", id="no-trace"),
        pytest.param(["--trace", "x.csv", "--save-trace", "y.csv"], "--save-trace writes a --generate trace",
                     id="save-trace-without-generate"),
        pytest.param(["--generate", "steady", "--startup-delay", "gamma:k=2"], "unknown start-up distribution",
                     id="unknown-startup-distribution"),
    ],
)
def test_cli_trace_source_errors(argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert problem in capsys.readouterr().err
