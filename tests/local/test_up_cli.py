"""`kapa up`'s refusals: bad input stops it before anything starts, with a message naming what is wrong."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from kapa.local.app_spec import app_spec
from kapa.local.stack import StackOptions
from kapa.local.up import _run, default_services_text, main
from kapa.core.services import parse_services


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ("services: []\n", "the services file lists no service"),
        ("services:\n - name: x\n   local: {command: [app]}\n", "default/x: local: the app must learn its port"),
        ("services:\n - name: x\n", "service default/x: local.command: expected a non-empty list"),
        ("nothing: here\n", "expected a mapping with a 'services' list"),
    ],
)
def test_bad_services_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], services: str, message: str) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(services)
    assert main(["--services", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--services", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "--config" in capsys.readouterr().err


async def test_missing_prometheus_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # kapa up's work directory
    entries = parse_services(yaml.safe_load(default_services_text()))
    apps = {entry.spec.key: app_spec(entry) for entry in entries}
    options = StackOptions(services_file=None, prometheus_binary=str(tmp_path / "prometheus"))
    assert await _run(entries, apps, options, live_view=False) == 1
    err = capsys.readouterr().err
    assert "Prometheus is not installed" in err and "make setup" in err and "apt-get install prometheus" in err
