"""`kapa explain` finds the scaler of the running `kapa up` without --scaler, and says what to do when no
scaler answers."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scaler import explain

EXPLANATION = {
    "service": "default/hello",
    "config": {"metric": "concurrency", "target": 7.0, "stable_window_s": 60.0, "panic_window_s": 6.0,
               "min_scale": 0, "max_scale": 0, "max_scale_up_rate": 1000.0, "max_scale_down_rate": 2.0,
               "scale_down_delay_s": 0.0},
    "metrics_stale": False,
    "decisions": [],
}


class _Explain(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(EXPLANATION).encode()
        self.send_response(200 if self.path == "/v1/explain/default/hello" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scaler_url() -> Iterator[str]:
    """A stand-in scaler answering GET /v1/explain/default/hello."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Explain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Announcements land in the test's own directory, out of sight of any real `kapa up` on the machine."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path / "kapa" / "up"


def _exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_without_scaler_it_asks_the_running_kapa_up(scaler_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    announcement = explain.announce_local_scaler(scaler_url)
    assert announcement.read_text().strip() == scaler_url
    assert explain.main(["default/hello"]) == 0
    assert "default/hello: metric concurrency, target 7 per pod" in capsys.readouterr().out


def test_an_announcement_left_by_a_dead_kapa_up_is_ignored_and_removed(
    runtime_dir: Path, scaler_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    explain.announce_local_scaler(scaler_url)
    runtime_dir.mkdir(parents=True, exist_ok=True)
    stale = runtime_dir / f"{_exited_pid()}{explain.LOCAL_SCALER_SUFFIX}"
    stale.write_text("http://127.0.0.1:1\n")
    assert explain.local_scaler_urls() == [scaler_url]
    assert not stale.exists()
    assert explain.main(["default/hello"]) == 0


def test_several_kapa_ups_need_a_choice(runtime_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    explain.announce_local_scaler("http://127.0.0.1:1")  # as if this process were a kapa up
    # And its parent another, alive for the whole test.
    (runtime_dir / f"{os.getppid()}{explain.LOCAL_SCALER_SUFFIX}").write_text("http://127.0.0.1:2\n")
    assert explain.main(["default/hello"]) == 2
    err = capsys.readouterr().err
    assert "--scaler" in err and "http://127.0.0.1:1" in err and "http://127.0.0.1:2" in err


@pytest.mark.parametrize("args", [["default/hello"], ["default/hello", "--scaler", "http://127.0.0.1:1"]],
                         ids=["nothing-running", "given-url"])
def test_no_scaler_answering_says_how_to_give_one(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on port 1, the default's stand-in, so this holds even where a scaler runs on 9096.
    monkeypatch.setattr(explain, "DEFAULT_SCALER_URL", "http://127.0.0.1:1")
    assert explain.main(args) == 1
    err = capsys.readouterr().err
    assert "http://127.0.0.1:1" in err and "--scaler URL" in err and "kapa up" in err
