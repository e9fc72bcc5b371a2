"""The `kapa` command dispatches to each part's own entry point."""

from __future__ import annotations

import importlib

import pytest

from kapa import cli


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out
    assert "kapa COMMAND --help" in out


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_resolves_to_a_callable(name: str) -> None:
    module_name, function_name = cli.SUBCOMMANDS[name][0].split(":")
    assert callable(getattr(importlib.import_module(module_name), function_name))
