"""The live view and its log-line form, from made-up statuses."""

from __future__ import annotations

from rich.console import Console

from kapa.local.view import ReplicaHistory, ServiceStatus, change_line, render, restart_lines, sparkline
from kapa.services import ServiceKey

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


def test_change_line_only_on_changes_that_matter() -> None:
    before = ServiceStatus(HELLO, desired=1, ready=1, stable=3.0, rps=10.0)
    assert change_line(None, before) is not None
    assert change_line(before, ServiceStatus(HELLO, desired=1, ready=1, stable=4.0, rps=20.0)) is None
    line = change_line(before, ServiceStatus(HELLO, desired=3, ready=1, starting=2, stable=25.0))
    assert line is not None and "service=default/hello desired=3 ready=1 starting=2" in line


def test_restart_lines_name_only_the_parts_started_again() -> None:
    assert restart_lines({}) == [] and restart_lines({"prometheus": 0, "scaler": 0}) == []
    (line,) = restart_lines({"prometheus": 0, "scaler": 2, "activator": 1})
    assert "scaler 2x" in line and "activator 1x" in line and "prometheus" not in line
