"""`kapa up`'s refusals: bad input stops it before anything starts, with a message naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from kapa.local.up import main


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
