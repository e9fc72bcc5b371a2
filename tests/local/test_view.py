"""The live view and its log-line form, from made-up statuses."""

from __future__ import annotations

from rich.console import Console

from kapa.core.contract import METRIC_RPS
from kapa.local.view import ReplicaHistory, ServiceStatus, change_line, render, restart_lines, sparkline
from kapa.core.services import ServiceKey

HELLO = ServiceKey("default", "hello")


def test_sparkline_scales_to_the_top() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 1, 4, 8]) == "▁▂▅█"
    assert sparkline([0, 1, 1]) == "▁██"
    # The desired count sets the scale when it is above everything seen.
    assert sparkline([4], top=8) == "▅"
    assert sparkline([1], top=100) == "▂"


def test_history_keeps_the_last_samples() -> None:
    history = ReplicaHistory(length=3)
    for ready in range(5):
        samples = history.record(HELLO, ready)
    assert samples == (2, 3, 4)


def test_render_shows_every_figure() -> None:
    status = ServiceStatus(HELLO, desired=5, ready=4, starting=1, stable=49.6, panic=51.2, target=7.0, panic_mode=True,
                           mode="serve", rps=480.5, held=3, stale=True, failures=1, history=(0, 2, 4))
    console = Console(width=160, record=True)
    console.print(render([status], ["Prometheus: http://127.0.0.1:9"]))
    text = console.export_text()
    for expected in ("Prometheus: http://127.0.0.1:9", "default/hello", "4/5", "1/0", "49.6", "51.2", "7.0", "PANIC",
                     "serve", "480.5", "STALE", "1 failed", "▁▄▇"):
        assert expected in text, expected


def test_render_names_the_unit_of_each_services_figures() -> None:
    """stable, panic and target are concurrent requests or requests/s, as the service scales: each row says."""
    api = ServiceKey("default", "api")
    statuses = [ServiceStatus(HELLO, desired=1, ready=1, stable=3.0, panic=4.0, target=7.0, mode="serve"),
                ServiceStatus(api, metric=METRIC_RPS, desired=2, ready=2, stable=180.0, panic=190.0, target=140.0,
                              mode="proxy")]
    console = Console(width=160, record=True)
    console.print(render(statuses, []))
    lines = console.export_text().splitlines()
    header = "\n".join(line for line in lines if "stable" in line and "default/" not in line)
    hello = next(line for line in lines if line.strip().startswith("default/hello"))
    api_row = next(line for line in lines if line.strip().startswith("default/api"))
    assert "conc." not in header  # the columns hold either unit
    assert "conc." in hello and "180.0" in api_row and "req/s" in api_row
    # The scaler's routing, whether or not Envoy acts on it.
    assert "stable serve" in hello and "stable proxy" in api_row


def test_change_line_only_on_changes_that_matter() -> None:
    before = ServiceStatus(HELLO, desired=1, ready=1, stable=3.0, rps=10.0)
    assert change_line(None, before) is not None
    assert change_line(before, ServiceStatus(HELLO, desired=1, ready=1, stable=4.0, rps=20.0)) is None
    line = change_line(before, ServiceStatus(HELLO, desired=3, ready=1, starting=2, stable=25.0))
    assert line is not None and "service=default/hello desired=3 ready=1 starting=2" in line
    rps = change_line(None, ServiceStatus(HELLO, metric=METRIC_RPS, desired=1, ready=1, stable=180.0, mode="proxy"))
    assert rps is not None and "metric=rps stable=180.0" in rps and "mode=proxy" in rps


def test_restart_lines_name_only_the_parts_started_again() -> None:
    assert restart_lines({}) == [] and restart_lines({"prometheus": 0, "scaler": 0}) == []
    (line,) = restart_lines({"prometheus": 0, "scaler": 2, "activator": 1})
    assert "scaler 2x" in line and "activator 1x" in line and "prometheus" not in line
